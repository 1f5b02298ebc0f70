//! Kubernetes: the manifests validate, the DaemonSet runs the agent with capabilities rather
//! than privileged, and the kustomizations (base and privileged variant) render and validate.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml::Value;

use super::{CAPABILITIES, deploy, manifest, read, run_ok, text, try_run, yaml};

const VALIDATE: &str = "`pip install kubernetes-validate`";

fn kubernetes_validate(files: &[&Path]) -> String {
    let mut command = Command::new("kubernetes-validate");
    if try_run(Command::new("kubernetes-validate").arg("--version")).is_none() {
        command = Command::new("python3");
        command.args(["-m", "kubernetes_validate"]);
    }
    run_ok(command.arg("--strict").args(files), VALIDATE)
}

/// The documents of a multi-document stream, as `kustomize build` writes it.
fn yaml_documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kustomization_resources(dir: &Path) -> Vec<PathBuf> {
    let kustomization = yaml(&dir.join("kustomization.yaml"));
    let resources = kustomization["resources"].as_sequence().expect("resources");
    resources
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .collect()
}

#[test]
fn kubernetes_manifests_validate() {
    let dir = deploy("kubernetes");
    let resources = kustomization_resources(&dir);
    // Every manifest beside the kustomization is one of its resources, and exists.
    let mut listed: Vec<_> = resources
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    let mut present: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_str().unwrap().ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present);
    let files: Vec<&Path> = resources.iter().map(PathBuf::as_path).collect();
    let out = kubernetes_validate(&files);
    for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
        assert!(
            out.contains(&format!("passed for resource {kind}/monitor")),
            "{out}"
        );
    }
    // kubernetes-validate has no schema for the Operator's PodMonitor: its fields are checked
    // here against the DaemonSet it scrapes.
    assert!(
        out.contains("Couldn't find schema for kind PodMonitor"),
        "{out}"
    );
    let monitor = manifest("podmonitor.yaml");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let spec = &monitor["spec"];
    let pod = &manifest("daemonset.yaml")["spec"]["template"];
    for (key, value) in spec["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][key], value,
            "PodMonitor selector {key:?}"
        );
    }
    assert_eq!(spec["namespaceSelector"]["matchNames"][0], "monitor");
    let endpoint = &spec["podMetricsEndpoints"][0];
    assert_eq!(
        endpoint["port"],
        pod["spec"]["containers"][0]["ports"][0]["name"]
    );
    assert_eq!(endpoint["path"], "/metrics");
    let known = ["port", "path", "interval", "scrapeTimeout", "relabelings"];
    for key in endpoint.as_mapping().unwrap().keys() {
        assert!(
            known.contains(&key.as_str().unwrap()),
            "unexpected endpoint field {key:?}"
        );
    }
}

#[test]
fn daemonset_runs_the_agent_with_capabilities_not_privileged() {
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    let [container] = &spec["containers"].as_sequence().unwrap()[..] else {
        panic!()
    };
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsUser"], 0);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    let added: BTreeSet<&str> = security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(added, CAPABILITIES.iter().copied().collect());
    // Every capability is explained where it is granted.
    let source = read(&deploy("kubernetes/daemonset.yaml"));
    for capability in CAPABILITIES {
        assert!(
            source.contains(&format!("# {capability}: ")),
            "{capability} undocumented"
        );
    }
    // Listens on the port the probes, the Service and the PodMonitor use.
    let env = &container["env"][0];
    assert_eq!(
        (env["name"].as_str(), env["value"].as_str()),
        (Some("MONITOR_LISTEN"), Some("0.0.0.0:9464"))
    );
    let port = &container["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["containerPort"].as_i64()),
        (Some("metrics"), Some(9464))
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            (get["path"].as_str(), get["port"].as_str()),
            (Some("/healthz"), Some("metrics"))
        );
    }
    let resources = &container["resources"];
    assert_eq!(resources["requests"]["cpu"], "50m");
    assert_eq!(resources["limits"]["memory"], "128Mi");
    // Host paths, all read-only.
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let mut host_paths = BTreeSet::new();
    for volume in spec["volumes"].as_sequence().unwrap() {
        let path = volume["hostPath"]["path"]
            .as_str()
            .expect("only hostPath volumes");
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("mounted");
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{path} must be read-only"
        );
        host_paths.insert(path);
    }
    let expected = [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/sys/fs/cgroup",
        "/var/log/pods",
        "/var/log/containers",
    ];
    assert_eq!(host_paths, expected.into_iter().collect());
    // The Service selects these pods on that port, headless.
    let service = manifest("service.yaml");
    assert_eq!(service["spec"]["clusterIP"], "None");
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][key], value);
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(
        spec["serviceAccountName"],
        manifest("serviceaccount.yaml")["metadata"]["name"]
    );
    let namespace = manifest("namespace.yaml");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// Renders with kustomize, which `cargo xtask setup` installs (kubectl's own is too old on
/// Debian for `components`).
#[test]
fn kustomizations_render_and_validate() {
    let base = deploy("kubernetes");
    let component = base.join("privileged");
    let patch = yaml(&component.join("daemonset-privileged.yaml"));
    assert_eq!(
        patch["metadata"]["name"],
        manifest("daemonset.yaml")["metadata"]["name"]
    );
    assert_eq!(
        yaml(&component.join("kustomization.yaml"))["kind"],
        "Component"
    );
    let kustomize = ["kustomize", "/usr/local/bin/kustomize"]
        .into_iter()
        .find(|program| try_run(Command::new(program).arg("version")).is_some())
        .expect("kustomize is not installed: run `cargo xtask setup`");
    let dir = tempfile::tempdir().unwrap();
    let render = |root: &Path, name: &str| {
        let out = Command::new(kustomize)
            .arg("build")
            .arg(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kustomize build {}: {}",
            root.display(),
            text(&out)
        );
        let file = dir.path().join(name);
        fs::write(&file, &out.stdout).unwrap();
        kubernetes_validate(&[&file]);
        yaml_documents(&String::from_utf8(out.stdout).unwrap())
    };
    let documents = render(&base, "base.yaml");
    let kinds: BTreeSet<&str> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    let expected = [
        "Namespace",
        "ServiceAccount",
        "DaemonSet",
        "Service",
        "PodMonitor",
    ];
    assert_eq!(kinds, expected.into_iter().collect());
    // The privileged variant, through an overlay of the base with the component (kustomize
    // takes relative paths only).
    let overlay = dir.path().join("overlay");
    fs::create_dir(&overlay).unwrap();
    let overlay = fs::canonicalize(overlay).unwrap();
    let relative = |path: &Path| {
        let up = "../".repeat(overlay.components().count() - 1);
        let path = fs::canonicalize(path).unwrap();
        format!("{up}{}", path.strip_prefix("/").unwrap().display())
    };
    let with_component = |component: &Path, name: &str| {
        let kustomization = format!(
            "resources: [{}]\ncomponents: [{}]\n",
            relative(&base),
            relative(component)
        );
        fs::write(overlay.join("kustomization.yaml"), kustomization).unwrap();
        render(&overlay, name)
    };
    // The HTTPS component: the base's capabilities and SYS_ADMIN, nothing else changed.
    let documents = with_component(&base.join("https"), "https.yaml");
    let daemonset = documents.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let security = &daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let base_security =
        &manifest("daemonset.yaml")["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let mut expected = base_security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .clone();
    expected.push("SYS_ADMIN".into());
    assert_eq!(
        security["capabilities"]["add"].as_sequence().unwrap(),
        &expected
    );
    assert_eq!(security["privileged"], false);
    let documents = with_component(&component, "privileged.yaml");
    let daemonset = documents.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &daemonset["spec"]["template"]["spec"];
    let security = &spec["containers"][0]["securityContext"];
    assert_eq!(security["privileged"], true);
    assert!(security.get("capabilities").is_none(), "{security:?}");
    let volumes = serde_yaml::to_string(&spec["volumes"]).unwrap();
    assert!(!volumes.contains("/sys/kernel/btf") && volumes.contains("/sys/kernel/tracing"));
}
