"""The Kubernetes manifests: every overlay rendered, validated against the
Kubernetes OpenAPI schemas (offline, kubernetes-validate, strict: unknown
fields fail), and held to the invariants a secure, available deployment
needs. The renderer itself is tested on small kustomizations of its own.

The broker's configuration in each overlay is loaded by the broker's own
loader in crates/tessera-server/src/config/tests/kubernetes.rs; the image is
built and run by tests/e2e/image.rs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

HERE = Path(__file__).resolve().parent.parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import render  # noqa: E402

Obj = dict[str, Any]

OVERLAYS = ["single", "ha", "spire"]
# The oldest Kubernetes the manifests need (native sidecars and the preStop
# sleep action are on by default from 1.30) and the newest schema shipped.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
# What the operator creates (docs/OPERATIONS.md) or every namespace has.
EXTERNAL_SECRETS = {"tessera-tls", "tessera-redis"}
EXTERNAL_CONFIG_MAPS = {"kube-root-ca.crt"}
WORKLOADS = {"Deployment", "StatefulSet"}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    name: str = request.param
    return name, render.render(HERE / "overlays" / name)


def example_objects() -> list[Obj]:
    objects: list[Obj] = []
    for path in sorted((HERE / "examples").glob("*.yaml")):
        objects.extend(o for o in yaml.safe_load_all(path.read_text()) if o)
    return objects


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_labels(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector {selector}: only matchLabels is checked"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def broker_config(objects: list[Obj]) -> dict[str, Any]:
    text = find(objects, "ConfigMap", "tessera-config")["data"]["tesserad.toml"]
    return tomllib.loads(text)


# ---- schema validation ----


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_of_every_overlay_validates_against_the_kubernetes_schema(
    overlay: tuple[str, list[Obj]], version: str
) -> None:
    name, objects = overlay
    assert objects, name
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name}: {label(obj)} is not a valid Kubernetes {version} object: {path}: {e.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_examples_validate_against_the_kubernetes_schema(version: str) -> None:
    objects = example_objects()
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_example_agent_is_restricted_sized_and_pinned() -> None:
    (job,) = [o for o in example_objects() if o["kind"] == "Job"]
    (spec,) = render.pod_specs(job)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for c in render.containers(job):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert not c["image"].endswith(":latest")


def test_the_schema_check_refuses_an_unknown_field() -> None:
    # The check above can fail: a misspelt field is caught.
    _, objects = "ha", render.render(HERE / "overlays" / "ha")
    deployment = find(objects, "Deployment", "tesserad")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


# ---- invariants ----


def test_every_long_running_container_has_probes(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    for obj in (o for o in objects if o["kind"] in WORKLOADS):
        spec = obj["spec"]["template"]["spec"]
        long_running = list(spec["containers"]) + [
            c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"
        ]
        for c in long_running:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert probe in c, f"{name}: {label(obj)} container {c['name']} has no {probe}"


def test_the_broker_probes_its_readiness(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    c = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}


def test_every_pod_runs_as_non_root_with_a_restricted_security_context(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    for obj in (o for o in objects if render.pod_specs(o)):
        for spec in render.pod_specs(obj):
            pod = spec.get("securityContext", {})
            assert pod.get("runAsNonRoot") is True, f"{name}: {label(obj)}"
            assert pod.get("runAsUser", 0) != 0, f"{name}: {label(obj)}"
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{name}: {label(obj)}"
            assert spec.get("automountServiceAccountToken") is False, f"{name}: {label(obj)}"
            assert not spec.get("hostNetwork"), f"{name}: {label(obj)}"
            assert not spec.get("hostPID"), f"{name}: {label(obj)}"
        for c in render.containers(obj):
            sc = c.get("securityContext", {})
            where = f"{name}: {label(obj)} container {c['name']}"
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities") == {"drop": ["ALL"]}, where
            assert not sc.get("privileged"), where


def test_every_container_sets_resources(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    for obj in objects:
        for c in render.containers(obj):
            resources = c.get("resources", {})
            where = f"{name}: {label(obj)} container {c['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


def test_every_image_is_pinned_never_latest(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    for obj in objects:
        for c in render.containers(obj):
            image_name, rest = render._split_image(c["image"])
            where = f"{name}: {label(obj)} container {c['name']} image {c['image']}"
            assert rest.startswith((":", "@")), f"{where}: no tag"
            assert rest != ":latest", where
            assert "/" in image_name, f"{where}: not fully qualified (the kustomization's images did not apply)"


def test_the_broker_image_is_this_version(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    version = cargo["workspace"]["package"]["version"]
    c = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].endswith(f"/tessera:{version}"), c["image"]


def test_every_multi_replica_workload_has_a_pdb_and_anti_affinity(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for obj in (o for o in objects if o["kind"] in WORKLOADS and o["spec"].get("replicas", 1) > 1):
        labels = pod_labels(obj)
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{name}: {label(obj)} has {len(covering)} PodDisruptionBudgets"
        pdb = covering[0]["spec"]
        assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 1, f"{name}: {pdb}"
        anti = obj["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ]
        assert any(
            t["topologyKey"] == "kubernetes.io/hostname" and selects(t["labelSelector"], labels) for t in terms
        ), f"{name}: {label(obj)} has no anti-affinity against itself"


def test_the_ha_overlays_run_two_or_more_brokers_on_sentinel(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    replicas = find(objects, "Deployment", "tesserad")["spec"]["replicas"]
    store = broker_config(objects)["store"]
    if name == "single":
        assert replicas == 1
        assert store["backend"] == "memory"
        assert find(objects, "Deployment", "tesserad")["spec"]["strategy"] == {"type": "Recreate"}
        return
    assert replicas >= 2
    assert store == {**store, "backend": "redis", "mode": "sentinel", "sentinel_master": "tessera"}
    assert find(objects, "StatefulSet", "redis")["spec"]["replicas"] == 3
    assert find(objects, "StatefulSet", "redis-sentinel")["spec"]["replicas"] == 3
    sentinel = (HERE / "overlays/ha/redis/sentinel.conf").read_text()
    assert re.search(r"^sentinel monitor tessera \S+ 6379 2$", sentinel, re.M), "quorum 2 of 3"
    # The store's URLs come from the Secret, never from the ConfigMap.
    env = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["containers"][0]["env"]
    urls = [e for e in env if e["name"] == "TESSERA_STORE__URLS"]
    assert urls == [
        {"name": "TESSERA_STORE__URLS", "valueFrom": {"secretKeyRef": {"name": "tessera-redis", "key": "store-urls"}}}
    ]
    assert "urls" not in store


def test_every_config_map_and_secret_used_exists_or_is_the_operators(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"} | EXTERNAL_CONFIG_MAPS
    for obj in (o for o in objects if render.pod_specs(o)):
        for spec in render.pod_specs(obj):
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in config_maps, f"{name}: {label(obj)} volume {v['name']}"
                if "secret" in v:
                    assert v["secret"]["secretName"] in EXTERNAL_SECRETS, f"{name}: {label(obj)}"
        for c in render.containers(obj):
            for mount in c.get("volumeMounts", []):
                # Updated in place only when mounted whole.
                assert "subPath" not in mount, f"{name}: {label(obj)} {mount}"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in EXTERNAL_SECRETS, f"{name}: {label(obj)} {e['name']}"


def mounted(container: Obj, path: str) -> bool:
    return any(Path(path).is_relative_to(m["mountPath"]) for m in container.get("volumeMounts", []))


def test_config_and_policies_reload_from_their_config_maps(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    config = broker_config(objects)
    assert config["policy"]["watch"] is True, name
    volumes = {v["name"]: v for v in find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "tessera-config"
    assert volumes["policies"]["configMap"]["name"] == "tessera-policies"


def test_every_path_in_the_broker_config_is_mounted(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    config = broker_config(objects)
    c = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["containers"][0]
    paths = [config["tls"]["cert"], config["tls"]["key"], config["tls"]["trust_bundle"], config["policy"]["dir"]]
    paths.append(str(Path(config["audit"]["file"]).parent))
    paths += [i["jwks_ca"] for i in config.get("attestation", {}).get("jwt", {}).get("issuers", []) if "jwks_ca" in i]
    for path in paths:
        assert mounted(c, path), f"{name}: {path} is on no volume of tesserad"
    assert c["args"] == ["--config", "/etc/tessera/config/tesserad.toml"]
    assert mounted(c, "/etc/tessera/config/tesserad.toml")
    # The one writable place is a volume, not the image.
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == [str(Path(config["audit"]["file"]).parent)], name


def test_services_reach_named_ports_of_the_pods_they_select(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    for svc in (o for o in objects if o["kind"] == "Service"):
        backends = [w for w in workloads if selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(w))]
        assert backends, f"{name}: {label(svc)} selects nothing"
        for port in svc["spec"]["ports"]:
            names = {p.get("name") for w in backends for c in render.containers(w) for p in c.get("ports", [])}
            assert port["targetPort"] in names, f"{name}: {label(svc)} port {port}"


def test_only_the_broker_and_redis_itself_reach_redis(overlay: tuple[str, list[Obj]]) -> None:
    name, objects = overlay
    if name == "single":
        return
    allowed = {"tesserad", "redis", "redis-sentinel"}
    for target in ("redis", "redis-sentinel"):
        policies = [
            p
            for p in objects
            if p["kind"] == "NetworkPolicy"
            and p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": target}}
        ]
        assert len(policies) == 1, f"{name}: {target}"
        spec = policies[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        for rule in spec["ingress"]:
            for peer in rule["from"]:
                # Same namespace only (no namespaceSelector), by pod label.
                assert set(peer) == {"podSelector"}, f"{name}: {peer}"
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] in allowed


def test_agents_reach_only_the_broker(overlay: tuple[str, list[Obj]]) -> None:
    _, objects = overlay
    ingress = find(objects, "NetworkPolicy", "tesserad-ingress")["spec"]
    assert ingress["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "tesserad"}}
    egress = find(objects, "NetworkPolicy", "tessera-clients-egress")["spec"]
    assert egress["policyTypes"] == ["Egress"]
    targets = [peer for rule in egress["egress"] for peer in rule["to"]]
    assert {p["podSelector"]["matchLabels"].get("app.kubernetes.io/name", "dns") for p in targets} == {
        "tesserad",
        "dns",
    }


def test_resource_requests_follow_the_benchmark() -> None:
    # docs/benchmarks.md: peak RSS under the mint load and CPU per mint.
    bench = (REPO / "docs/benchmarks.md").read_text()
    rss = re.search(r"peak RSS under the mint load \| tesserad ([\d.]+) MiB", bench)
    cpu = re.search(r"server CPU per mint \(tesserad \+ redis-server\) \| (\d+) µs", bench)
    assert rss, "docs/benchmarks.md no longer states the peak RSS"
    assert cpu, "docs/benchmarks.md no longer states the CPU per mint"
    objects = render.render(HERE / "overlays/ha")
    r = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["containers"][0]["resources"]
    mib = {"Mi": 1, "Gi": 1024}
    request = int(r["requests"]["memory"][:-2]) * mib[r["requests"]["memory"][-2:]]
    limit = int(r["limits"]["memory"][:-2]) * mib[r["limits"]["memory"][-2:]]
    # Room above the measured peak, and a limit the peak is far from.
    assert float(rss.group(1)) * 2 <= request
    assert limit >= 4 * float(rss.group(1))
    millicores = int(r["requests"]["cpu"].removesuffix("m"))
    mints_per_second = millicores / 1000 / (int(cpu.group(1)) / 1e6)
    assert mints_per_second >= 100, f"{millicores}m serves only {mints_per_second:.0f} mints/s"


# ---- tesserad --check on each overlay's ConfigMap ----

# The README's recipe for the broker's certificate (Deploy on Kubernetes).
OPENSSL_RECIPE = r"""
set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj /CN=tessera-ca -keyout ca.key.pem -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=tesserad \
  -keyout broker.key.pem -out broker.csr
openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key.pem -days 90 -out broker.pem -extfile <(printf '%s\n' \
  'subjectAltName=DNS:tessera.tessera.svc,DNS:tessera-oauth.tessera.svc,URI:spiffe://example.org/tesserad' \
  'extendedKeyUsage=serverAuth' 'basicConstraints=critical,CA:FALSE')
"""


def test_the_readme_certificate_recipe_is_the_one_tested() -> None:
    readme = (REPO / "README.md").read_text()
    for line in OPENSSL_RECIPE.strip().splitlines()[1:]:
        assert line in readme, line


def tesserad() -> Path:
    bin_dir = os.environ.get("TESSERA_BIN")
    assert bin_dir, "TESSERA_BIN (the directory of the built tesserad) is not set: make k8s-check sets it"
    path = Path(bin_dir) / "tesserad"
    assert path.is_file(), f"{path} missing: make build"
    return path


def test_tesserad_check_accepts_the_config_map_of_every_overlay(overlay: tuple[str, list[Obj]], tmp_path: Path) -> None:
    """`tesserad --check` (the real loader, the TLS material, the policy
    set, the writable audit path) on the ConfigMap's tesserad.toml, with the
    pod's paths moved under a temporary directory and the Deployment's
    environment."""
    name, objects = overlay
    subprocess.run(["bash", "-c", OPENSSL_RECIPE], cwd=tmp_path, check=True, capture_output=True)
    # What the pod mounts, where the pod mounts it.
    files = {
        "etc/tessera/tls/tls.crt": "broker.pem",
        "etc/tessera/tls/tls.key": "broker.key.pem",
        "etc/tessera/tls/ca.crt": "ca.pem",
        "etc/tessera/kube-ca/ca.crt": "ca.pem",
        "run/spire/certs/bundle.pem": "ca.pem",
    }
    root = tmp_path / "pod"
    for dest, src in files.items():
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / src, root / dest)
    for key, text in find(objects, "ConfigMap", "tessera-policies")["data"].items():
        (root / "etc/tessera/policies").mkdir(parents=True, exist_ok=True)
        (root / "etc/tessera/policies" / key).write_text(text)
    (root / "var/lib/tessera").mkdir(parents=True)
    text = find(objects, "ConfigMap", "tessera-config")["data"]["tesserad.toml"]
    for prefix in ("/etc/tessera/", "/var/lib/tessera/", "/run/spire/"):
        text = text.replace(f'"{prefix}', f'"{root}{prefix}')
    # Loopback, any port: nothing binds under --check, but stay off 0.0.0.0.
    text = re.sub(r'"0\.0\.0\.0:\d+"', '"127.0.0.1:0"', text)
    config = root / "etc/tessera/config/tesserad.toml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    env = {"PATH": os.environ["PATH"], "TESSERA_SERVER__INSTANCE_ID": "tesserad-5d8f7c9b4-x2x7q"}
    deployment = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]["containers"][0]
    if any(e["name"] == "TESSERA_STORE__URLS" for e in deployment["env"]):
        env["TESSERA_STORE__URLS"] = '["redis://tessera:p@127.0.0.1:1/0"]'
    out = subprocess.run(
        [str(tesserad()), "--check", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"{name}: {out.stderr}"
    assert "is valid" in out.stdout
    # And it can fail: a key the broker does not know.
    config.write_text(text + "\n[server.zz_unknown]\n")
    bad = subprocess.run(
        [str(tesserad()), "--check", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 64, bad.stderr


# ---- the overlays match the rest of the repository ----


def test_the_policy_config_map_is_the_shipped_baseline() -> None:
    assert (HERE / "base/policies/baseline.cedar").read_text() == (REPO / "deploy/policies/baseline.cedar").read_text()


def redis_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key] = value.strip()
    return settings


def test_redis_persists_as_deploy_redis_says() -> None:
    shipped = redis_settings((REPO / "deploy/redis/redis.conf").read_text())
    ours = redis_settings((HERE / "overlays/ha/redis/redis.conf").read_text())
    for key in shipped:
        if key.startswith(("append", "aof-", "auto-aof", "no-appendfsync", "save", "maxmemory-policy", "lazyfree")):
            assert ours.get(key) == shipped[key], f"{key}: {ours.get(key)} here, {shipped[key]} in deploy/redis"
    assert ours["appendonly"] == "yes"
    assert ours["min-replicas-to-write"] == "1"


def acl_rules(text: str) -> list[str]:
    return [re.sub(r" #\S+", " #HASH", line) for line in text.splitlines() if line.startswith("user ")]


def test_redis_users_are_the_shipped_acl() -> None:
    assert acl_rules((HERE / "overlays/ha/redis/users.acl").read_text()) == acl_rules(
        (REPO / "deploy/redis/users.acl").read_text()
    )
    sentinel = (REPO / "deploy/redis/sentinel.conf").read_text()
    assert acl_rules((HERE / "overlays/ha/redis/sentinel.conf").read_text()) == acl_rules(sentinel)


def test_the_example_agent_is_registered_and_its_token_fits_the_issuer() -> None:
    config = broker_config(render.render(HERE / "overlays/ha"))
    (issuer,) = config["attestation"]["jwt"]["issuers"]
    job = next(o for o in example_objects() if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (projected,) = [v["projected"] for v in pod["volumes"] if "projected" in v]
    (source,) = projected["sources"]
    assert source["serviceAccountToken"]["audience"] == issuer["audience"]
    assert source["serviceAccountToken"]["expirationSeconds"] <= 3600
    spiffe_id = (
        issuer["mapping"]
        .replace("{kubernetes.io.namespace}", job["metadata"]["namespace"])
        .replace("{kubernetes.io.serviceaccount.name}", pod["serviceAccountName"])
    )
    identity = next(i for i in config["identities"] if i["id"] == spiffe_id)
    assert "jwt" in identity["attestation"]
    assert job["spec"]["template"]["metadata"]["labels"]["tessera.dev/client"] == "true"


def test_the_spire_overlay_trusts_spire_and_registers_x509_identities() -> None:
    objects = render.render(HERE / "overlays/spire")
    config = broker_config(objects)
    assert config["tls"]["trust_bundle"].startswith("/run/spire/certs/")
    assert "jwt" not in config.get("attestation", {})
    assert all(i["attestation"] == ["x509"] for i in config["identities"])
    spec = find(objects, "Deployment", "tesserad")["spec"]["template"]["spec"]
    (helper,) = spec["initContainers"]
    assert helper["restartPolicy"] == "Always"
    assert {"name": "spiffe-workload-api", "csi": {"driver": "csi.spiffe.io", "readOnly": True}} in spec["volumes"]
    helper_conf = find(objects, "ConfigMap", "tessera-spiffe-helper")["data"]["helper.conf"]
    assert 'cert_dir = "/run/spire/certs"' in helper_conf
    assert 'svid_bundle_file_name = "bundle.pem"' in helper_conf


# ---- redis/init.sh, run ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


PASSWORDS = {
    "TESSERA_PASSWORD": "t0pass",
    "REPLICA_PASSWORD": "r0pass",
    "SENTINEL_PASSWORD": "s0pass",
    "SENTINEL_PEER_PASSWORD": "p0pass",
    "OPS_PASSWORD": "o0pass",
}


def run_init(tmp: Path, role: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        "PATH": os.environ["PATH"],
        "CONFIG_DIR": str(HERE / "overlays/ha/redis"),
        "DATA_DIR": str(tmp),
        "POD_NAME": "redis-0",
        "POD_NAMESPACE": "tessera-test.invalid",
        "SERVICE": "redis",
        # No sentinel answers (a port nothing listens on): the first start.
        "SENTINELS": "127.0.0.1",
        "SENTINEL_PORT": str(free_port()),
        **PASSWORDS,
        **env,
    }
    return subprocess.run(
        ["sh", str(HERE / "overlays/ha/redis/init.sh"), role], env=full, capture_output=True, text=True, timeout=60
    )


def test_init_refuses_a_password_it_cannot_substitute_safely(tmp_path: Path) -> None:
    out = run_init(tmp_path, "redis", TESSERA_PASSWORD="a/b")
    assert out.returncode == 1
    assert "TESSERA_PASSWORD must be set" in out.stderr
    assert "a/b" not in out.stderr
    assert not (tmp_path / "conf").exists()


def test_init_writes_a_sentinel_config_with_every_value_filled(tmp_path: Path) -> None:
    out = run_init(tmp_path, "sentinel", POD_NAME="redis-sentinel-1", SERVICE="redis-sentinel")
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "conf/sentinel.conf").read_text()
    assert "@@" not in conf, conf
    assert "sentinel monitor tessera redis-0.redis.tessera-test.invalid.svc 6379 2" in conf
    assert "sentinel announce-ip redis-sentinel-1.redis-sentinel.tessera-test.invalid.svc" in conf
    digest = hashlib.sha256(b"t0pass").hexdigest()
    assert f"user tessera on #{digest} " in conf
    assert (tmp_path / "conf/sentinel.conf").stat().st_mode & 0o077 == 0


@pytest.fixture
def redis_from_init(tmp_path: Path) -> Iterator[int]:
    """A redis-server on the configuration init.sh writes for redis-0 (the
    first primary), on a free loopback port."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server missing: make redis installs it")
    out = run_init(tmp_path, "redis")
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "conf/redis.conf").read_text()
    assert "@@" not in conf
    assert not re.search(r"^replicaof ", conf, re.M), "redis-0 starts as the primary"
    port = free_port()
    proc = subprocess.Popen(
        [
            server,
            str(tmp_path / "conf/redis.conf"),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
            *("--aclfile", str(tmp_path / "conf/users.acl")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "redis-server refused the configuration init.sh wrote"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not listen in 30 s"
                time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait()


def cli(port: int, *args: str, user: str | None = None, password: str | None = None) -> str:
    env = {"PATH": os.environ["PATH"]}
    cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
    if user is not None and password is not None:
        cmd += ["--user", user]
        env["REDISCLI_AUTH"] = password
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=10).stdout.strip()


def test_redis_runs_on_the_config_init_writes(redis_from_init: int) -> None:
    port = redis_from_init
    assert "NOAUTH" in cli(port, "PING"), "the default user must be off"
    assert cli(port, "PING", user="tessera", password="t0pass") == "PONG"
    assert "NOAUTH" in cli(port, "PING", user="tessera", password="wrong")
    # The broker's user reaches only its own keys.
    assert "NOPERM" in cli(port, "GET", "other:key", user="tessera", password="t0pass")
    # A primary without a replica refuses writes rather than lose them in a failover.
    assert "NOREPLICAS" in cli(port, "SET", "tessera:k", "v", user="tessera", password="t0pass")
    ops = ("ops", "o0pass")
    assert cli(port, "CONFIG", "GET", "appendonly", user=ops[0], password=ops[1]).splitlines() == ["appendonly", "yes"]
    assert cli(port, "CONFIG", "GET", "maxmemory-policy", user=ops[0], password=ops[1]).splitlines()[1] == "noeviction"


# ---- the renderer ----


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  template:
    spec:
      containers:
        - {name: a, image: "app:1", env: [{name: X, value: "1"}]}
"""


def test_render_generates_patches_sets_images_and_namespaces(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "base/kustomization.yaml": "resources: [app.yaml, role.yaml]\n",
            "base/app.yaml": DEPLOYMENT,
            "base/role.yaml": "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n",
            "over/kustomization.yaml": """
resources: [../base]
namespace: ns
configMapGenerator:
  - {name: cfg, files: [conf/a.toml, b=conf/a.toml], literals: [k=v=w]}
generatorOptions: {disableNameSuffixHash: true}
patches:
  - target: {kind: Deployment, name: app}
    patch: |-
      - {op: replace, path: /spec/replicas, value: 3}
      - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: Y, value: "2"}}
      - {op: add, path: /spec/template/spec/containers/0/env/0, value: {name: W, value: "0"}}
      - {op: remove, path: /spec/template/spec/containers/0/env/1}
images:
  - {name: app, newName: registry.example/app, newTag: "2"}
""",
            "over/conf/a.toml": "x = 1\n",
        },
    )
    objects = render.render(tmp_path / "over")
    app = find(objects, "Deployment", "app")
    assert app["spec"]["replicas"] == 3
    container = app["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "W", "value": "0"}, {"name": "Y", "value": "2"}]
    assert container["image"] == "registry.example/app:2"
    assert app["metadata"]["namespace"] == "ns"
    assert "namespace" not in find(objects, "ClusterRole", "r")["metadata"]
    cfg = find(objects, "ConfigMap", "cfg")
    assert cfg["data"] == {"a.toml": "x = 1\n", "b": "x = 1\n", "k": "v=w"}
    assert cfg["metadata"]["namespace"] == "ns"


def test_render_replaces_a_generated_config_map(tmp_path: Path) -> None:
    gen = "generatorOptions: {disableNameSuffixHash: true}\n"
    write(
        tmp_path,
        {
            "base/kustomization.yaml": "configMapGenerator: [{name: c, literals: [a=1]}]\n" + gen,
            "over/kustomization.yaml": "resources: [../base]\n"
            "configMapGenerator: [{name: c, behavior: replace, literals: [b=2]}]\n" + gen,
            "dup/kustomization.yaml": "resources: [../base]\nconfigMapGenerator: [{name: c, literals: [b=2]}]\n" + gen,
        },
    )
    assert find(render.render(tmp_path / "over"), "ConfigMap", "c")["data"] == {"b": "2"}
    with pytest.raises(render.RenderError, match="already exists"):
        render.render(tmp_path / "dup")


@pytest.mark.parametrize(
    ("kustomization", "error"),
    [
        ("resources: [app.yaml]\ncommonLabels: {a: b}\n", "unsupported field"),
        ("resources: [app.yaml]\nconfigMapGenerator: [{name: c, literals: [a=1]}]\n", "disableNameSuffixHash"),
        (
            "resources: [app.yaml]\npatches: [{target: {kind: Deployment, name: app}, patch: 'spec: {replicas: 2}'}]\n",
            "JSON 6902",
        ),
        (
            "resources: [app.yaml]\npatches: [{target: {kind: Deployment, name: app}, "
            "patch: '[{op: replace, path: /spec/nothere, value: 1}]'}]\n",
            "nothing to replace",
        ),
        (
            "resources: [app.yaml]\npatches: [{target: {kind: Deployment, name: other}, "
            "patch: '[{op: remove, path: /spec}]'}]\n",
            "matches nothing",
        ),
        ("resources: [missing.yaml]\n", "not found"),
        ("resources: [../outside.yaml]\n", "outside"),
    ],
)
def test_render_refuses_what_it_does_not_render_faithfully(tmp_path: Path, kustomization: str, error: str) -> None:
    write(tmp_path, {"k/kustomization.yaml": kustomization, "k/app.yaml": DEPLOYMENT, "outside.yaml": DEPLOYMENT})
    with pytest.raises(render.RenderError, match=error):
        render.render(tmp_path / "k")


def test_render_cli_prints_the_overlay(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / "render.py"), str(HERE / "overlays/ha")], capture_output=True, text=True, check=True
    )
    assert list(yaml.safe_load_all(out.stdout)) == render.render(HERE / "overlays/ha")
    bad = subprocess.run([sys.executable, str(HERE / "render.py"), str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "no kustomization.yaml" in bad.stderr
