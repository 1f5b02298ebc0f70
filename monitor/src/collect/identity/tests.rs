use super::*;

#[test]
fn otel_service_name_wins_over_resource_attributes() {
    let environ = b"PATH=/bin\0OTEL_RESOURCE_ATTRIBUTES=service.name=other,env=prod\0OTEL_SERVICE_NAME=checkout\0";
    assert_eq!(otel_service_name(environ), Some("checkout".into()));
    let attributes =
        b"HOME=/\0OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,service.name=cart%20api\0";
    assert_eq!(otel_service_name(attributes), Some("cart api".into()));
    assert_eq!(otel_service_name(b"OTEL_SERVICE_NAME=\0HOME=/\0"), None);
    assert_eq!(otel_service_name(b"\xff\xfe\0"), None);
}

const ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";
const UID: &str = "7d9c2b1a-3e4f-4a5b-8c6d-0e1f2a3b4c5d";

fn container(cgroup: &str) -> Option<ContainerRef> {
    container_of(cgroup)
}

#[test]
fn kubelet_cgroupfs_paths_give_container_and_pod() {
    let cgroup = format!("0::/kubepods/burstable/pod{UID}/{ID}\n");
    assert_eq!(
        container(&cgroup),
        Some(ContainerRef {
            id: ID.into(),
            pod_uid: Some(UID.into())
        })
    );
}

#[test]
fn kubelet_systemd_paths_give_container_and_pod() {
    let uid = UID.replace('-', "_");
    let cgroup = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
    );
    assert_eq!(
        container(&cgroup),
        Some(ContainerRef {
            id: ID.into(),
            pod_uid: Some(UID.into())
        })
    );
    let crio = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope");
    assert_eq!(container(&crio).unwrap().pod_uid, Some(UID.into()));
}

#[test]
fn docker_and_podman_paths_give_the_container_only() {
    for cgroup in [
        format!("0::/system.slice/docker-{ID}.scope"),
        format!("12:cpu,cpuacct:/docker/{ID}\n0::/"),
        format!("0::/machine.slice/libpod-{ID}.scope/container"),
    ] {
        assert_eq!(
            container(&cgroup),
            Some(ContainerRef {
                id: ID.into(),
                pod_uid: None
            }),
            "{cgroup}"
        );
    }
}

#[test]
fn host_processes_and_monitors_are_no_container() {
    assert_eq!(
        container("0::/user.slice/user-0.slice/session-1.scope"),
        None
    );
    assert_eq!(container("0::/system.slice/nginx.service"), None);
    assert_eq!(
        container(&format!("0::/machine.slice/libpod-conmon-{ID}.scope")),
        None
    );
    assert_eq!(container("0::/init.scope\n"), None);
    assert_eq!(container(""), None);
}

#[test]
fn pod_directories_and_container_names() {
    assert_eq!(
        parse_pod_dir(&format!("shop_checkout-7d9f_{UID}")),
        Some(("shop".into(), "checkout-7d9f".into(), UID.into()))
    );
    assert_eq!(parse_pod_dir("not-a-pod"), None);

    let root = tempfile::tempdir().unwrap();
    let pods = root.path().join("pods");
    let pod_dir = pods.join(format!("shop_checkout-7d9f_{UID}"));
    std::fs::create_dir_all(pod_dir.join("app")).unwrap();
    std::fs::create_dir_all(pod_dir.join("sidecar")).unwrap();
    let scanned = scan_pod_logs(&pods);
    let pod = &scanned[UID];
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str()),
        ("shop", "checkout-7d9f")
    );
    assert_eq!(pod.containers, ["app", "sidecar"]);

    // Two containers: the kubelet's symlink names the one with this id.
    let containers = root.path().join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    assert_eq!(container_name(pod, ID, &containers), None);
    std::fs::write(
        containers.join(format!("checkout-7d9f_shop_sidecar-{ID}.log")),
        "",
    )
    .unwrap();
    assert_eq!(container_name(pod, ID, &containers), Some("sidecar".into()));
    // One container: that one.
    let single = Pod {
        containers: vec!["web".into()],
        ..pod.clone()
    };
    assert_eq!(
        container_name(&single, "other", &containers),
        Some("web".into())
    );
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn interpreters_are_named_after_their_script() {
    assert_eq!(
        script_name("python3", &args("python3 app.py")),
        Some("app".into())
    );
    assert_eq!(
        script_name("python3.11", &args("python3 -u /srv/app.py --port 80")),
        Some("app".into())
    );
    assert_eq!(
        script_name("python3", &args("python3 -W ignore -m shop.worker")),
        Some("worker".into())
    );
    assert_eq!(script_name("python3", &args("python3 -c print(1)")), None);
    assert_eq!(script_name("python3", &args("python3")), None);
    assert_eq!(
        script_name("node", &args("node --require ./trace.js server.js")),
        Some("server".into())
    );
    assert_eq!(
        script_name("java", &args("java -Xmx1g -jar /opt/billing.jar")),
        Some("billing".into())
    );
    assert_eq!(
        script_name("java", &args("java -cp lib/* com.shop.Main")),
        Some("Main".into())
    );
    assert_eq!(
        script_name("java", &args("java -Xss1m Server.java 8080")),
        Some("Server".into())
    );
    assert_eq!(
        script_name("java", &args("java -p mods -m shop/com.shop.Main")),
        Some("Main".into())
    );
    assert_eq!(
        script_name("java", &args("java --module-path mods --module shop")),
        Some("shop".into())
    );
    assert_eq!(
        script_name("ruby", &args("ruby -I lib app.rb")),
        Some("app".into())
    );
    assert_eq!(
        script_name("php", &args("php index.php")),
        Some("index".into())
    );
    assert_eq!(script_name("nginx", &args("nginx -g daemon off;")), None);
}

#[test]
fn options_with_values_and_inline_code_name_no_script() {
    // Found by running `php -S`: its address became the service name (`127.0.0`).
    assert_eq!(
        script_name("php", &args("php -S 127.0.0.1:8080 -t /srv/www")),
        None
    );
    assert_eq!(
        script_name("php", &args("php -S 0.0.0.0:8080 router.php")),
        Some("router".into())
    );
    assert_eq!(
        script_name("php", &args("php -d memory_limit=1G -f /srv/cron.php x")),
        Some("cron".into())
    );
    // The program is on the command line: what follows are its arguments.
    for line in [
        "php -r echo(1); worker.php",
        "node -e require('./server') server.js",
        "node --eval x app.js",
        "ruby -e puts(1) app.rb",
        "python3 -c import x script.py",
    ] {
        let executable = line.split(' ').next().unwrap();
        assert_eq!(script_name(executable, &args(line)), None, "{line}");
    }
}

#[test]
fn python_launchers_are_named_after_the_application_they_run() {
    for (line, name) in [
        (
            "python3 /usr/bin/gunicorn -w 4 -b 127.0.0.1:8000 app:app",
            "app",
        ),
        // Django's conventional module: the project.
        (
            "python3 /usr/bin/gunicorn --bind=:8000 shop.wsgi:application",
            "shop",
        ),
        (
            "python3 /usr/bin/daphne -b localhost -p 80 shop.asgi:application",
            "shop",
        ),
        (
            "python3 -m gunicorn -k uvicorn.workers.UvicornWorker api.main:app",
            "main",
        ),
        (
            "python3 -m uvicorn --host 0.0.0.0 --port 80 main:app",
            "main",
        ),
        (
            "python3 /usr/local/bin/uvicorn --factory billing:create_app()",
            "billing",
        ),
        (
            "python3 /usr/local/bin/hypercorn -b localhost:8000 orders:app",
            "orders",
        ),
        (
            "python3 /usr/local/bin/waitress-serve --listen=*:8080 shop:app",
            "shop",
        ),
        // gunicorn's own name for it wins.
        (
            "python3 /usr/bin/gunicorn -n shop-api -b :80 app:app",
            "shop-api",
        ),
        (
            "python3 /usr/bin/gunicorn --name=shop-api app:app",
            "shop-api",
        ),
        // Option values shaped like an application are not one.
        (
            "python3 /usr/bin/gunicorn --workers 3 --bind unix:shop.sock -m 007 wsgi:app",
            "wsgi",
        ),
        (
            "python3 /usr/bin/gunicorn -c python:shop.gunicorn_conf shop.wsgi:app",
            "shop",
        ),
        (
            "python3 /usr/bin/gunicorn -k uvicorn.workers.UvicornWorker -c /gunicorn_conf.py main:app",
            "main",
        ),
        (
            "python3 /usr/bin/gunicorn --worker-class=egg:meinheld#gunicorn_worker app:app",
            "app",
        ),
        (
            "python3 /usr/local/bin/hypercorn --config python:settings app:app",
            "app",
        ),
        (
            "python3 /usr/local/bin/daphne -e tcp:port=8000:interface=127.0.0.1 shop.asgi:application",
            "shop",
        ),
        (
            "python3 /usr/local/bin/uvicorn --reload-include *.py main:app",
            "main",
        ),
        // flask: a module, module:factory, or a file.
        (
            "python3 /usr/local/bin/flask --app hello run --port 80",
            "hello",
        ),
        (
            "python3 /usr/local/bin/flask --app=hello:create_app run",
            "hello",
        ),
        ("python3 /usr/local/bin/flask --app app.py run", "app"),
        ("python3 /usr/local/bin/flask --app src/hello run", "hello"),
        // celery: the project's job workers.
        (
            "python3 /usr/local/bin/celery -A tasks worker -l INFO",
            "tasks-celery",
        ),
        ("python3 -m celery --app=shop.celery beat", "shop-celery"),
        (
            "python3 /usr/local/bin/celery -A app.celery worker",
            "app-celery",
        ),
        // fastapi: the file after `run` or `dev`, not `--app`, which names a variable.
        ("python3 /usr/local/bin/fastapi run app/main.py", "main"),
        (
            "python3 /usr/local/bin/fastapi run --app api src/orders.py",
            "orders",
        ),
    ] {
        assert_eq!(
            script_name("python3", &args(line)),
            Some(name.into()),
            "{line}"
        );
    }
    // Run by their `#!` line, launchers have their own name for the executable's.
    let pyenv = "/root/.pyenv/versions/3.11.7/bin";
    let pyenv_line = format!("{pyenv}/python3.11 {pyenv}/gunicorn -w 2 app:app");
    assert_eq!(
        script_name("gunicorn", &args(&pyenv_line)),
        Some("app".into())
    );
    assert_eq!(
        script_name(
            "uvicorn",
            &args("/usr/bin/python3 /usr/bin/uvicorn main:app")
        ),
        Some("main".into())
    );
    // What names no application for sure keeps the launcher's name.
    for (line, name) in [
        (
            "python3 /usr/bin/gunicorn -b localhost:8000 unix:/run/x",
            "gunicorn",
        ),
        (
            "python3 /usr/bin/gunicorn --config gunicorn.conf.py",
            "gunicorn",
        ),
        ("python3 /usr/bin/gunicorn -n 3f9a2c7e1b4d app:app", "app"),
        ("python3 /usr/local/bin/flask run", "flask"),
        ("python3 /usr/local/bin/fastapi run", "fastapi"),
        ("python3 /srv/app.py shop:app", "app"),
    ] {
        assert_eq!(
            script_name("python3", &args(line)),
            Some(name.into()),
            "{line}"
        );
    }
}

#[test]
fn a_gunicorn_that_retitled_itself_is_named_after_its_application() {
    // With `setproctitle` installed, the title replaces the command line, padded with blanks.
    let cmdline = b"gunicorn: worker [shop.wsgi:application]                \0";
    assert_eq!(
        script_name("python3", &cmdline_args(cmdline)),
        Some("shop".into())
    );
    assert_eq!(
        script_name("python3", &cmdline_args(b"gunicorn: master [app:app]\0")),
        Some("app".into())
    );
    // Its `--name`, as it is.
    assert_eq!(
        script_name("python3", &cmdline_args(b"gunicorn: master [shop-api]\0")),
        Some("shop-api".into())
    );
    assert_eq!(
        script_name("python3", &cmdline_args(b"gunicorn: master\0")),
        None
    );
}

#[test]
fn multiprocessing_children_are_told() {
    // What Debian's uvicorn 0.17.6 --workers 2 starts.
    let child = cmdline_args(
        b"/usr/bin/python3\0-B\0-c\0from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)\0--multiprocessing-fork\0",
    );
    assert!(is_multiprocessing_child("python3", &child));
    let tracker = cmdline_args(
        b"/usr/bin/python3\0-B\0-c\0from multiprocessing.resource_tracker import main;main(4)\0",
    );
    assert!(is_multiprocessing_child("python3", &tracker));
    assert!(!is_multiprocessing_child(
        "python3",
        &args("python3 -c import os; print(1)")
    ));
    assert!(!is_multiprocessing_child("node", &child[1..]));
}

#[test]
fn programs_named_after_their_directory_are_told() {
    // Read from Debian's puma 5.6.5 serving a `config.ru`, alone and with two workers, and
    // before it retitled itself.
    let puma: [&[u8]; 3] = [
        b"puma 5.6.5 (tcp://127.0.0.1:18201) [shopfront]\0\0",
        b"puma: cluster worker 0: 1085 [shopfront]\0\0\0\0\0\0\0\0",
        b"ruby3.1\0/usr/bin/puma\0-b\0tcp://127.0.0.1:18201\0",
    ];
    for cmdline in puma {
        assert_eq!(directory_suffix("puma", &cmdline_args(cmdline)), Some(""));
    }
    // sidekiq's title (`Sidekiq::Launcher::PROCTITLES`): the application's job worker.
    let sidekiq = cmdline_args(b"sidekiq 6.4.1 shopfront [0 of 5 busy]\0");
    assert_eq!(directory_suffix("sidekiq", &sidekiq), Some("-sidekiq"));
    // A framework's launcher, run by Node from node_modules.
    for line in [
        "node /srv/shop/node_modules/.bin/next start",
        "/usr/bin/node --enable-source-maps node_modules/@nestjs/cli/bin/nest.js start",
    ] {
        assert_eq!(directory_suffix("node", &args(line)), Some(""), "{line}");
    }
    for (executable, line) in [
        ("node", "node /srv/shop/server.js"),
        ("node", "node -e require('node_modules/x')"),
        ("python3", "python3 /srv/node_modules/x.py"),
        ("python3", "python3 /usr/bin/gunicorn app:app"),
    ] {
        assert_eq!(directory_suffix(executable, &args(line)), None, "{line}");
    }
}

#[test]
fn a_working_directory_names_its_application_unless_it_names_a_run_or_a_person() {
    for (directory, name) in [
        ("/srv/shopfront", Some("shopfront")),
        ("/srv/shopfront/", Some("shopfront")),
        ("/srv/shop (deleted)", Some("shop")),
        ("/srv/shop/releases/20261206083000", Some("shop")),
        ("/srv/shop/releases/20261206083000Z", Some("shop")),
        ("/var/www/shop/current", Some("current")),
        ("/srv/releases/v2", Some("v2")),
        // A run's or a person's: no name.
        ("/opt/buildAgent/work/9c4c9e7b3dbe7c21", None),
        ("/srv/20261206083000", None),
        ("/tmp/tmp.Xa9kQ2", None),
        ("/home/alice", None),
        ("/root", None),
        ("/", None),
    ] {
        assert_eq!(app_directory(directory).as_deref(), name, "{directory}");
    }
}

#[test]
fn a_jar_is_named_without_its_version() {
    for (jar, name) in [
        ("/opt/billing-1.4.2.jar", "billing"),
        ("demo-0.0.1-SNAPSHOT.jar", "demo"),
        ("order-service-2.10.0-RELEASE.jar", "order-service"),
        ("app-1.0.jar", "app"),
        // No version: kept whole.
        ("billing.jar", "billing"),
        ("service-v2.jar", "service-v2"),
        ("service-2.jar", "service-2"),
        ("java-17-tools.jar", "java-17-tools"),
        ("-1.2.jar", "-1.2"),
    ] {
        let line = format!("java -Xmx1g -jar {jar} --port 80");
        assert_eq!(
            script_name("java", &args(&line)),
            Some(name.into()),
            "{jar}"
        );
    }
}

#[test]
fn uwsgi_is_named_after_the_application_it_loads() {
    // Read from Debian's uwsgi 2.0.21 with its python3 plugin, and its init script's shape.
    for (line, name) in [
        (
            "uwsgi --http-socket 127.0.0.1:18203 --plugin python3 --wsgi-file /tmp/gu/app.py --callable app --master --processes 2",
            "app",
        ),
        (
            "uwsgi --http-socket 127.0.0.1:18204 --plugin python3 --chdir /tmp/gu --module app:app",
            "app",
        ),
        (
            "uwsgi --ini /usr/share/uwsgi/conf/default.ini --ini /etc/uwsgi/apps-enabled/geonode.ini --daemonize /var/log/uwsgi/app/geonode.log",
            "geonode",
        ),
        (
            "uwsgi --ini /etc/uwsgi/shop.ini --module billing:app",
            "billing",
        ),
        ("uwsgi --http=:8000 --module=shop.wsgi:application", "shop"),
        (
            "uwsgi --chdir /home/foobar/myproject --wsgi-file myproject/wsgi.py",
            "myproject",
        ),
        ("uwsgi -w orders", "orders"),
    ] {
        assert_eq!(
            script_name("uwsgi", &args(line)),
            Some(name.into()),
            "{line}"
        );
    }
    assert_eq!(
        script_name("uwsgi", &args("uwsgi --emperor /etc/uwsgi/vassals")),
        None
    );
}

#[test]
fn command_lines_split_at_nuls() {
    assert_eq!(
        cmdline_args(b"python3\0-m\0\0shop.worker\0"),
        ["python3", "-m", "shop.worker"]
    );
    assert!(cmdline_args(b"").is_empty());
}

#[test]
fn blank_names_are_no_names() {
    // Found by fuzzing: both became an empty or blank `service_name`.
    let blank = b"OTEL_RESOURCE_ATTRIBUTES=service.name=%20%09\0";
    assert_eq!(otel_service_name(blank), None);
    let padded = b"OTEL_RESOURCE_ATTRIBUTES=service.name=%20cart%20\0";
    assert_eq!(otel_service_name(padded), Some("cart".into()));
    assert_eq!(script_name("python3", &args("python3 -m shop.")), None);
    assert_eq!(script_name("node", &args("node dist/")), None);
}

#[test]
fn a_host_process_is_named_after_its_systemd_service() {
    for (cgroup, name) in [
        // cgroup v2, as systemd sets it up.
        ("0::/system.slice/shopfront.service\n", Some("shopfront")),
        // Hybrid: the v1 lines come first, the unified one last.
        (
            "12:pids:/system.slice/billing.service\n1:name=systemd:/system.slice/billing.service\n0::/system.slice/billing.service\n",
            Some("billing"),
        ),
        // Legacy v1: systemd's named hierarchy alone.
        (
            "3:cpu,cpuacct:/system.slice/orders.service\n1:name=systemd:/system.slice/orders.service\n",
            Some("orders"),
        ),
        // Hybrid with the unified hierarchy unused: the named one tells.
        (
            "1:name=systemd:/system.slice/orders.service\n0::/\n",
            Some("orders"),
        ),
        // A template's instances are one service; escapes are undone.
        (
            "0::/system.slice/system-worker.slice/worker@2.service\n",
            Some("worker"),
        ),
        ("0::/system.slice/shop\\x2dapi.service\n", Some("shop-api")),
        // A user's own service.
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/notes.service\n",
            Some("notes"),
        ),
        // A sub-cgroup a delegated service made for its workers.
        ("0::/system.slice/ingest.service/workers\n", Some("ingest")),
        // Digits in a chosen name stay.
        (
            "0::/system.slice/shop2026api.service\n",
            Some("shop2026api"),
        ),
        // No service: the root, a login session, a scope inside a service.
        ("0::/\n", None),
        ("", None),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
            None,
        ),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/tmux-spawn-1.scope\n",
            None,
        ),
        // Units that run what others ask, or host applications: the command line names them.
        ("0::/system.slice/cron.service\n", None),
        ("0::/system.slice/ssh.service\n", None),
        (
            "0::/system.slice/system-getty.slice/getty@tty1.service\n",
            None,
        ),
        ("0::/system.slice/supervisor.service\n", None),
        ("0::/system.slice/pm2-root.service\n", None),
        ("0::/system.slice/gunicorn.service\n", None),
        ("0::/system.slice/php8.2-fpm.service\n", None),
        ("0::/system.slice/tomcat10.service\n", None),
        ("0::/system.slice/systemd-journald.service\n", None),
        ("0::/system.slice/run-u42.service\n", None),
        (
            "0::/system.slice/run-r3f2a9c0e4b7d41c5a8e2f6b9d0c3a7e1.service\n",
            None,
        ),
        (
            "0::/system.slice/3f2a9c0e-4b7d-41c5-a8e2-f6b9d0c3a7e1.service\n",
            None,
        ),
    ] {
        assert_eq!(service_unit(cgroup).as_deref(), name, "{cgroup}");
    }
}
