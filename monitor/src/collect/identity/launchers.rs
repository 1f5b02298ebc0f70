//! Servers and workers that run an application named on their command line or by the
//! directory they run in: Python's WSGI and ASGI servers (`gunicorn shop.wsgi:application`,
//! `uvicorn main:app`, uWSGI), `flask --app`, `celery -A`, `fastapi run main.py`, Ruby's puma
//! and sidekiq, frameworks' launchers run by Node from `node_modules`. Every service a host
//! runs under gunicorn would otherwise be called `gunicorn`; the application is the name its
//! owners use.
//!
//! Where a command line is ambiguous, the launcher keeps its own name: a wrong application
//! name is worse than none.

use monitor_common::http::SegmentShape;

/// WSGI and ASGI servers whose positional argument is the application, `module:attribute`.
const APP_SERVERS: &[&str] = &[
    "gunicorn",
    "uvicorn",
    "hypercorn",
    "daphne",
    "granian",
    "waitress-serve",
];

/// Options of those servers whose value is the next argument, so that a value shaped like an
/// application (`--bind localhost:8000`, `-c python:shop.conf`) is not taken for one.
#[rustfmt::skip]
const VALUE_OPTIONS: &[&str] = &[
    // gunicorn
    "-b", "--bind", "-c", "--config", "-k", "--worker-class", "-w", "--workers", "-t", "--timeout",
    "-u", "--user", "-g", "--group", "-m", "--umask", "-n", "--name", "-e", "--env", "-p", "--pid",
    "--chdir", "--threads", "--worker-connections", "--max-requests", "--max-requests-jitter",
    "--keep-alive", "--graceful-timeout", "--log-level", "--log-config", "--log-file",
    "--access-logfile", "--error-logfile", "--access-logformat", "--forwarded-allow-ips",
    "--statsd-host", "--statsd-prefix", "--backlog", "--limit-request-line",
    "--limit-request-fields", "--limit-request-field_size", "--worker-tmp-dir", "--paste",
    "--pythonpath", "--certfile", "--keyfile", "--ca-certs", "--ciphers", "--logger-class",
    "--proxy-allow-from",
    // uvicorn
    "--host", "--port", "--uds", "--fd", "--loop", "--http", "--ws", "--ws-max-size",
    "--ws-ping-interval", "--ws-ping-timeout", "--lifespan", "--interface", "--env-file",
    "--root-path", "--limit-concurrency", "--limit-max-requests", "--timeout-keep-alive",
    "--timeout-graceful-shutdown", "--ssl-keyfile", "--ssl-certfile", "--ssl-keyfile-password",
    "--ssl-version", "--ssl-cert-reqs", "--ssl-ca-certs", "--ssl-ciphers", "--header", "--app-dir",
    "--reload-dir", "--reload-include", "--reload-exclude", "--reload-delay",
    // hypercorn, daphne, granian
    "--insecure-bind", "--quic-bind", "--server-name", "-u", "--unix-socket", "--endpoint",
    "--access-log", "--proxy-headers-host", "--proxy-headers-port", "--http-timeout",
    "--ping-interval", "--ping-timeout", "--application-close-timeout", "--blocking-threads",
    "--url-path-prefix", "--pid-file", "--process-name", "--ssl-certificate",
];

/// Words before a colon that make an option's value, not a module: `unix:/run/app.sock`,
/// `tcp:port=80`, `python:shop.conf`, `egg:meinheld#worker`.
const SCHEMES: &[&str] = &[
    "unix", "tcp", "ssl", "fd", "http", "https", "python", "file", "egg", "config",
];

/// Module leaves that name a convention, not the application: Django's `proj.wsgi` and
/// `proj.asgi` are named after `proj`.
const CONVENTIONAL_LEAVES: &[&str] = &["wsgi", "asgi"];

/// The application that `launcher` (a script's or module's name) runs, from the arguments
/// that follow it; none when `launcher` is not one of them or names nothing for sure.
pub fn launched_app(launcher: &str, args: &[String]) -> Option<String> {
    match launcher {
        // `flask --app hello run`, `--app=hello:create_app`, `--app src/hello.py`.
        "flask" => option_value(args, &["--app", "-A"]).and_then(flask_app),
        // `celery -A shop worker`, `-A shop.celery`: the project, and what it runs there,
        // which the project's web server does not.
        "celery" => option_value(args, &["--app", "-A"])
            .and_then(|spec| spec.split([':', '.']).next().filter(|m| is_identifier(m)))
            .map(|project| format!("{project}-celery")),
        // `fastapi run app/main.py`: the file after `run` or `dev`.
        "fastapi" => {
            let command = args.iter().position(|arg| arg == "run" || arg == "dev")?;
            args[command + 1..]
                .iter()
                .find(|arg| arg.ends_with(".py") && !arg.starts_with('-'))
                .map(|path| python_file_app(path))
        }
        _ if APP_SERVERS.contains(&launcher) => server_app(launcher, args),
        _ => None,
    }
}

/// A WSGI or ASGI server's application: gunicorn's `--name`, else the positional
/// `module:attribute`.
fn server_app(launcher: &str, args: &[String]) -> Option<String> {
    if launcher == "gunicorn"
        && let Some(name) = option_value(args, &["-n", "--name"]).filter(|n| is_plain_name(n))
    {
        return Some(name.to_owned());
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg.starts_with('-') {
            if !arg.contains('=') && VALUE_OPTIONS.contains(&arg.as_str()) {
                args.next();
            }
            continue;
        }
        // Only `module:attribute` is taken: subcommands and bare words are not.
        if let Some(name) = module_name(arg, true) {
            return Some(name);
        }
    }
    None
}

/// The value of the first of `options` in `args` (`--app x` or `--app=x`).
fn option_value<'a>(args: &'a [String], options: &[&str]) -> Option<&'a str> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if options.contains(&arg.as_str()) {
            return args.next().map(String::as_str);
        }
        if let Some((option, value)) = arg.split_once('=')
            && options.contains(&option)
        {
            return Some(value);
        }
    }
    None
}

/// Flask's `--app`: a module, `module:attribute`, or a file or package directory.
fn flask_app(spec: &str) -> Option<String> {
    let module = spec.split_once(':').map_or(spec, |(module, _)| module);
    if module.contains('/') || module.ends_with(".py") {
        return Some(python_file_app(module.trim_end_matches('/'))).filter(|n| is_identifier(n));
    }
    module_name(spec, false)
}

/// The application named in the title a gunicorn with `setproctitle` installed gives its
/// processes, which replaces the whole command line: `gunicorn: worker
/// [shop.wsgi:application]`, or its `--name` (`gunicorn: master [shop-api]`).
pub fn retitled_app(args: &[String]) -> Option<String> {
    let title = args.first()?.trim_end();
    let spec = bracketed(title.strip_prefix("gunicorn: ")?)?;
    module_name(spec, false).or_else(|| is_plain_name(spec).then(|| spec.to_owned()))
}

/// Programs named after the directory they run in, and what is added to its name: puma
/// (alone, with its title `puma 6.4.2 (tcp://0.0.0.0:3000) [shop]`, or a cluster worker's
/// `puma: cluster worker 0: 1085 [shop]`) and a framework's launcher run by Node from
/// `node_modules` are the application itself; sidekiq, the application's job worker, gets
/// `-sidekiq` (its title: `sidekiq 7.2.0 shop [0 of 5 busy]`). `script` is the name the
/// command line gave (`script_name`), `package_program` whether Node runs a program from
/// `node_modules`.
pub fn directory_suffix(
    script: Option<&str>,
    args: &[String],
    package_program: bool,
) -> Option<&'static str> {
    let title = args.first().map_or("", |first| first.as_str());
    if script == Some("puma")
        || title.starts_with("puma ")
        || title.starts_with("puma: ")
        || package_program
    {
        return Some("");
    }
    if script == Some("sidekiq") || title.starts_with("sidekiq ") {
        return Some("-sidekiq");
    }
    None
}

/// The application a working directory names: its last component, or for a release
/// directory (`/srv/shop/releases/20261206083000`, Capistrano's and Ansistrano's) the
/// application's. None where the directory names no application: the root, a home
/// directory, or a last component that looks like an id (a build agent's hashed work
/// directory, `mktemp`'s), which would make a label of a user's name or of one value per run.
pub fn app_directory(directory: &str) -> Option<String> {
    let directory = directory.strip_suffix(" (deleted)").unwrap_or(directory);
    let parts: Vec<&str> = directory
        .split('/')
        .filter(|part| !part.is_empty())
        .collect();
    let name = match parts.as_slice() {
        [] | ["root"] | ["home", _] => return None,
        [.., app, "releases", release] if is_release(release) => app,
        [.., last] => last,
    };
    (!looks_like_id(name)).then(|| (*name).to_owned())
}

/// uWSGI, which embeds the interpreter in its own executable: `--module shop:app`, `-w shop`,
/// `--wsgi-file /srv/shop.py` (a Django project's `shop/wsgi.py`: `shop`), else the last
/// `--ini` (Debian's init script passes its own defaults first: `--ini
/// /usr/share/uwsgi/conf/default.ini --ini /etc/uwsgi/apps-enabled/shop.ini`).
pub fn uwsgi_app(executable: &str, args: &[String]) -> Option<String> {
    if executable != "uwsgi" && executable != "uwsgi-core" {
        return None;
    }
    let mut ini = None;
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let (option, inline) = match arg.split_once('=') {
            Some((option, value)) => (option, Some(value)),
            None => (arg.as_str(), None),
        };
        let mut value = || inline.or_else(|| args.next().map(String::as_str));
        match option {
            "--module" | "-w" | "--wsgi" => return value().and_then(|m| module_name(m, false)),
            "--wsgi-file" | "--file" => {
                return value().map(python_file_app);
            }
            "--ini" => {
                ini = value()
                    .filter(|path| !path.starts_with("/usr/share/uwsgi/"))
                    .map(super::stem)
                    .or(ini);
            }
            _ => {}
        }
    }
    ini
}

/// What the last `[...]` of a title holds.
fn bracketed(title: &str) -> Option<&str> {
    let (_, inside) = title.rsplit_once('[')?;
    inside.strip_suffix(']')
}

/// The name of the module in an application spec `module[:attribute]`: its last part, unless
/// that is a convention (`CONVENTIONAL_LEAVES`). None when `spec` is no such thing, or has no
/// attribute and `attribute_required`.
fn module_name(spec: &str, attribute_required: bool) -> Option<String> {
    let (module, attribute) = match spec.split_once(':') {
        Some((module, attribute)) => (module, Some(attribute)),
        None => (spec, None),
    };
    let attribute_ok = match attribute {
        // `app`, `create_app()`: an identifier first, whatever follows.
        Some(attribute) => attribute
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
        None => !attribute_required,
    };
    if !attribute_ok || SCHEMES.contains(&module) || !module.split('.').all(is_identifier) {
        return None;
    }
    Some(leaf(module, '.'))
}

/// The application a Python file names: its name (`app/main.py` -> `main`), or for a
/// conventional one its directory's (`shop/wsgi.py` -> `shop`).
fn python_file_app(path: &str) -> String {
    leaf(path.strip_suffix(".py").unwrap_or(path), '/')
}

/// The last part of a module (`.`) or path (`/`), or for a conventional one
/// (`CONVENTIONAL_LEAVES`) the part before it.
fn leaf(name: &str, separator: char) -> String {
    let mut parts = name.rsplit(separator);
    let last = parts.next().unwrap_or(name);
    match parts.next() {
        Some(parent) if CONVENTIONAL_LEAVES.contains(&last) && !parent.is_empty() => {
            parent.to_owned()
        }
        _ => last.to_owned(),
    }
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name given as it is (gunicorn's `--name`): letters, digits, `-`, `_` and `.`, starting
/// with a letter, and no id.
fn is_plain_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !looks_like_id(name)
}

/// A release directory's name: a timestamp (`20261206083000`, `20261206083000Z`).
fn is_release(name: &str) -> bool {
    let digits = name.strip_suffix('Z').unwrap_or(name);
    digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` reads as an id rather than a name, by the rules that template route
/// segments (`SegmentShape::is_identifier`): numbers, hex hashes, random tokens.
fn looks_like_id(name: &str) -> bool {
    let mut shape = SegmentShape::default();
    name.bytes().for_each(|b| shape.add(b));
    shape.is_identifier()
}
