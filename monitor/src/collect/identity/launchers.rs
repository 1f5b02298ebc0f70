//! Python programs that run an application named on their command line: WSGI and ASGI
//! servers (`gunicorn shop.wsgi:application`, `uvicorn main:app`), `flask --app`, `celery -A`,
//! `fastapi run main.py`. Every service a host runs under gunicorn would otherwise be called
//! `gunicorn`; the application module is the name its owners use.

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

/// The application in a title that gunicorn gives its processes when `setproctitle` is
/// installed, which replaces the whole command line: `gunicorn: worker [shop.wsgi:application]`.
pub fn retitled_app(args: &[String]) -> Option<String> {
    let title = args.first()?.strip_prefix("gunicorn: ")?;
    let (_, spec) = title.split_once('[')?;
    let (spec, _) = spec.split_once(']')?;
    module_name(spec, false)
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
