//! Servers and workers that run an application named on their command line or in the title
//! they give themselves: Python's WSGI and ASGI servers (`gunicorn shop.wsgi:application`,
//! `uvicorn main:app`, uWSGI), `flask --app`, `celery -A`, `fastapi run main.py`, Ruby's puma
//! and sidekiq. Every service a host runs under gunicorn would otherwise be called
//! `gunicorn`; the application is the name its owners use.

/// Launchers whose command line names the application they run.
const LAUNCHERS: &[&str] = &[
    "gunicorn",
    "uvicorn",
    "hypercorn",
    "daphne",
    "granian",
    "waitress-serve",
    "flask",
    "celery",
    "fastapi",
];

/// Module leaves that name a convention, not the application: Django's `proj.wsgi` and
/// `proj.asgi` are named after `proj`.
const CONVENTIONAL_LEAVES: &[&str] = &["wsgi", "asgi"];

/// The application that `launcher` (a script's or module's name) runs, from the arguments
/// that follow it; none when `launcher` is not one of them or names nothing.
pub fn launched_app(launcher: &str, args: &[String]) -> Option<String> {
    if !LAUNCHERS.contains(&launcher) {
        return None;
    }
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        // `flask --app hello run`, `celery -A proj worker`: the module may come without an
        // attribute.
        if arg == "--app" || arg == "-A" {
            return args.next().and_then(|spec| module_name(spec, false));
        }
        if let Some(spec) = arg.strip_prefix("--app=") {
            return module_name(spec, false);
        }
        if arg.starts_with('-') {
            continue;
        }
        // `fastapi run app/main.py`.
        if let Some(path) = arg.strip_suffix(".py") {
            return Some(leaf(path.rsplit('/').next().unwrap_or(path)));
        }
        // Only `module:attribute` is taken for the application: option values (`-b
        // localhost:8000`, `-k uvicorn.workers.UvicornWorker`) and subcommands (`run`) are not.
        if let Some(name) = module_name(arg, true) {
            return Some(name);
        }
    }
    None
}

/// The application named in the title a server gave itself, which replaces its whole
/// command line: gunicorn's with `setproctitle` installed, `gunicorn: worker
/// [shop.wsgi:application]`; puma's, `puma 6.4.2 (tcp://0.0.0.0:3000) [shop]` and `puma:
/// cluster worker 0: 1085 [shop]`, whose tag is the application's directory; sidekiq's,
/// `sidekiq 7.2.0 shop [0 of 5 busy]`, whose tag is the Rails application's directory.
pub fn retitled_app(args: &[String]) -> Option<String> {
    let title = args.first()?.trim_end();
    if let Some(rest) = title.strip_prefix("gunicorn: ") {
        return module_name(bracketed(rest)?, false);
    }
    if title.starts_with("puma ") || title.starts_with("puma: ") {
        return bracketed(title)
            .filter(|tag| !tag.is_empty())
            .map(str::to_owned);
    }
    if let Some(rest) = title.strip_prefix("sidekiq ") {
        // The version, then the tag (empty when none was set) and the busy count.
        let tag = rest.split(' ').nth(1)?;
        return (!tag.is_empty() && !tag.starts_with('[')).then(|| tag.to_owned());
    }
    None
}

/// Servers that tag themselves with the directory they run in (puma's title `[shop]`, sidekiq's
/// tag, the Rails convention): named `launcher`, they are named after that directory instead
/// (`app_directory`), as their titles name them once they have retitled themselves.
pub fn named_after_directory(launcher: &str) -> bool {
    matches!(launcher, "puma" | "sidekiq")
}

/// The name of the application in `directory` (a process's working directory): its last
/// component, or for a Capistrano release (`/srv/shop/releases/20261206083000`) the
/// application's, as sidekiq's tag has it.
pub fn app_directory(directory: &str) -> Option<String> {
    let mut parts = directory.trim_end_matches('/').rsplit('/');
    let last = parts.next().filter(|last| !last.is_empty())?;
    if last.bytes().all(|b| b.is_ascii_digit())
        && parts.next() == Some("releases")
        && let Some(app) = parts.next().filter(|app| !app.is_empty())
    {
        return Some(app.to_owned());
    }
    Some(last.to_owned())
}

/// uWSGI, which embeds the interpreter in its own executable: `uwsgi --module shop:app`, `-w
/// shop`, `--wsgi-file /srv/shop.py`, `--ini /etc/uwsgi/apps-enabled/shop.ini`.
pub fn uwsgi_app(executable: &str, args: &[String]) -> Option<String> {
    if executable != "uwsgi" && executable != "uwsgi-core" {
        return None;
    }
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let (option, inline) = match arg.split_once('=') {
            Some((option, value)) => (option, Some(value)),
            None => (arg.as_str(), None),
        };
        let mut value = || inline.or_else(|| args.next().map(String::as_str));
        match option {
            "--module" | "-w" | "--wsgi" => return value().and_then(|m| module_name(m, false)),
            "--wsgi-file" | "--file" | "--ini" => return value().map(super::stem),
            _ => {}
        }
    }
    None
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
    if !attribute_ok || !module.split('.').all(is_identifier) {
        return None;
    }
    Some(leaf(module))
}

fn leaf(module: &str) -> String {
    let mut parts = module.rsplit('.');
    let last = parts.next().unwrap_or(module);
    match parts.next() {
        Some(parent) if CONVENTIONAL_LEAVES.contains(&last) => parent.to_owned(),
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
