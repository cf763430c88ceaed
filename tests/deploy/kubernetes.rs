//! deploy/kubernetes/: every manifest validates offline with `kubernetes-validate --strict`
//! (PyPI; tests/run installs it into the tests' virtual environment), the kustomization
//! lists every manifest, and the StatefulSet has what issue 12 asks for.

use std::process::Command;

use crate::{deploy_file, python, run_ok};

/// The YAML documents of a manifest, as JSON (PyYAML, which kubernetes-validate brings).
fn documents(rel: &str) -> Vec<serde_json::Value> {
    let out = run_ok(
        Command::new(python())
            .args([
                "-c",
                "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
            ])
            .arg(deploy_file(rel)),
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_file("kubernetes"))
        .expect("deploy/kubernetes exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

fn kubernetes_validate_available() -> bool {
    let ok = Command::new(python())
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "kubernetes-validate is missing for {}: run tests/run (it installs tests/requirements.txt \
         into a virtual environment and sets PGW_TEST_PYTHON)",
        python().display()
    );
    ok
}

#[test]
fn every_manifest_validates_strictly() {
    assert!(kubernetes_validate_available());
    let files = manifests();
    assert!(files.len() >= 4, "{files:?}");
    let out = run_ok(
        Command::new(python())
            .args(["-m", "kubernetes_validate", "--strict"])
            .args(&files)
            .current_dir(deploy_file("kubernetes")),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("ERROR"), "{text}");
    for kind in [
        "statefulset/pgw",
        "service/pgw-peers",
        "service/pgw ",
        "poddisruptionbudget/pgw",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind} was not validated:\n{text}"
        );
    }
    // The validator rejects what it should (a misspelt field), so the pass above means something.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let services = std::fs::read_to_string(deploy_file("kubernetes/services.yaml")).unwrap();
    std::fs::write(
        &bad,
        services.replace("publishNotReadyAddresses:", "publishNotReadyAdresses:"),
    )
    .unwrap();
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed: {out:?}");
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = documents("kubernetes/kustomization.yaml");
    let resources: Vec<&str> = k[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for f in manifests() {
        if f != "kustomization.yaml" {
            assert!(
                resources.contains(&f.as_str()),
                "kustomization.yaml lacks {f}"
            );
        }
    }
}

#[test]
fn the_statefulset_runs_three_hardened_nodes() {
    let all: Vec<serde_json::Value> = manifests()
        .iter()
        .filter(|f| *f != "kustomization.yaml")
        .flat_map(|f| documents(&format!("kubernetes/{f}")))
        .collect();
    let find = |kind: &str, name: &str| {
        all.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let sts = find("StatefulSet", "pgw");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let headless = find("Service", spec["serviceName"].as_str().unwrap());
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let client = find("Service", "pgw");
    assert!(
        client["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 9091),
        "{client}"
    );
    let pdb = find("PodDisruptionBudget", "pgw");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    assert!(c["resources"]["requests"]["memory"].is_string(), "{c}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    let mounts = c["volumeMounts"].as_array().unwrap();
    let claim = spec["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .expect("a volumeClaimTemplate");
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == "/var/lib/pgw"),
        "{mounts:?}"
    );
    assert_eq!(
        spec["template"]["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );

    // The arguments: every peer is a DNS name of the headless Service, one per pod, and the
    // node id is the pod's index (ordinals start at 1, as Raft ids must be positive).
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--storage.path=/var/lib/pgw"), "{args:?}");
    let peers = args
        .iter()
        .find_map(|a| a.strip_prefix("--cluster.peers="))
        .expect("--cluster.peers");
    let start = spec["ordinals"]["start"].as_u64().unwrap_or(0);
    assert!(
        start >= 1,
        "ordinals.start {start}: node ids must be positive"
    );
    let expected: Vec<String> = (start..start + 3)
        .map(|i| {
            format!(
                "{i}=pgw-{i}.{}:9095",
                headless["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(peers, expected.join(","));
    assert!(args.contains(&"--cluster.node-id=$(POD_INDEX)"), "{args:?}");
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "POD_INDEX"
            && e["valueFrom"]["fieldRef"]["fieldPath"]
                == "metadata.labels['apps.kubernetes.io/pod-index']"),
        "{env:?}"
    );
    // pgw accepts every argument (the pod index substituted), as the kubelet would pass them.
    let dir = tempfile::tempdir().unwrap();
    let substituted: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("$(POD_INDEX)", &start.to_string())
                .replace("/var/lib/pgw", dir.path().to_str().unwrap())
        })
        .collect();
    run_ok(
        Command::new(crate::support::pgw_binary())
            .args(&substituted)
            .arg("--version"),
    );
}
