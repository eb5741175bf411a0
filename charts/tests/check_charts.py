#!/usr/bin/env python3
"""The chart checks of `cargo xtask test`: offline, no cluster, no helm binary.

For every chart under charts/ and every value file (the chart's defaults and
each charts/<chart>/ci/*-values.yaml), this:

1. lints the chart (Helm's own linter, strict, values schema included);
2. renders it the way `helm template` does (an install dry run with Helm's
   SDK: values.schema.json, kubeVersion, YAML validity, NOTES.txt);
3. validates every object strictly against the Kubernetes schemas of each
   version in KUBE_VERSIONS (a misspelt field fails; custom resources that
   have no schema here, the ServiceMonitor, are skipped by name and checked
   by hand);
4. checks what ties the objects together: selectors, named ports, probes,
   the admin and data ports against proxy.toml, mounts (never subPath), the
   checksum that rolls the pods on a proxy.toml change and its absence for
   upstreams.toml, the grace period against the shutdown timings, the
   dashboard's queries (promtool) and metric names;
5. for switchyard: writes the rendered proxy.toml, upstreams.toml and token
   where the pod mounts them (under a temporary root, in the kubelet's
   `..data` symlink layout) and runs
   `switchyard check --offline` on them; and checks that the default pools
   name the Services the translation-api chart creates.

Then it proves that the checks can fail: every fixture in charts/tests/broken
must fail at the stage its header names, with the message it names, and so
must the switchyard chart with a field of its Deployment template misspelt.

usage: check_charts.py --switchyard PATH/TO/switchyard
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
BROKEN = Path(__file__).resolve().parent / "broken"
NAMESPACE = "switchyard-test"
# The oldest Kubernetes the checks hold the charts to, and the newest the
# schemas know.
KUBE_VERSIONS = ["1.31.0", "1.37.0"]
# Kinds with no schema in kubernetes-validate; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}
# docs/configuration.md "Metrics": the families the proxy exports (histograms add _bucket, _sum, _count).
METRICS = {
    "switchyard_requests_total",
    "switchyard_request_duration_seconds",
    "switchyard_inflight_requests",
    "switchyard_active_pool",
    "switchyard_switches_total",
    "switchyard_config_generation",
    "switchyard_config_reloads_total",
    "switchyard_upstream_errors_total",
    "switchyard_upstream_retries_total",
    "switchyard_upstream_healthy",
    "switchyard_last_switch_timestamp_seconds",
    "switchyard_client_connections",
}


class CheckFailed(Exception):
    """A check found a problem; `stage` says which step."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"[{stage}] {message}")
        self.stage = stage
        self.message = message


@dataclass
class Case:
    chart: Path
    name: str
    values: dict[str, Any]
    release: str
    expect_stage: str | None = None
    expect_message: str | None = None


@dataclass
class Rendered:
    manifest: str
    notes: str
    docs: list[dict[str, Any]] = field(default_factory=list)

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
        if len(found) != 1:
            raise CheckFailed("objects", f"expected one {kind} {name or ''}, found {len(found)}")
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]


def release_name(chart: Path, values: dict[str, Any]) -> str:
    if chart.name == "translation-api":
        return f"translation-api-{values.get('colour', 'blue')}"
    return chart.name


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: a values file must be a mapping")
    return data


# ---------------------------------------------------------------- stages


def lint(case: Case) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(str(case.chart), case.values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        problems += [{"error": e} for e in report.get("errors") or []]
        if problems:
            raise CheckFailed("lint", "; ".join(str(p.get("error", p)) for p in problems))


def render(case: Case) -> Rendered:
    try:
        with helm.Config(storage_driver="memory", namespace=NAMESPACE) as cfg:
            release = cfg.install(str(case.chart), case.release, case.values, namespace=NAMESPACE, dry_run="client")
    except helm.HelmError as e:
        raise CheckFailed("render", str(e)) from e
    rendered = Rendered(manifest=release["manifest"], notes=release.get("notes") or "")
    try:
        rendered.docs = [d for d in yaml.safe_load_all(rendered.manifest) if d]
    except yaml.YAMLError as e:
        raise CheckFailed("render", f"the manifest is not YAML: {e}") from e
    if not rendered.docs:
        raise CheckFailed("render", "no objects rendered")
    if not rendered.notes.strip():
        raise CheckFailed("render", "NOTES.txt rendered empty")
    return rendered


def validate(rendered: Rendered) -> None:
    for doc in rendered.docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("metadata", {}).get("namespace") not in (None, NAMESPACE):
            raise CheckFailed("validate", f"{what} is not in the release namespace")
        if doc.get("kind") in CUSTOM_KINDS:
            continue
        for kube in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, kube, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                raise CheckFailed("validate", f"{what} (Kubernetes {kube}) at {path or '/'}: {e.message}") from e
            except kubernetes_validate.SchemaNotFoundError as e:
                raise CheckFailed("validate", f"{what}: no schema ({e})") from e


def expect(cond: bool, stage: str, message: str) -> None:
    if not cond:
        raise CheckFailed(stage, message)


def pod_spec(deploy: dict[str, Any]) -> dict[str, Any]:
    return deploy["spec"]["template"]["spec"]


def container_port(container: dict[str, Any], name: str) -> int:
    for p in container.get("ports", []):
        if p.get("name") == name:
            return int(p["containerPort"])
    raise CheckFailed("wiring", f"container {container['name']} has no port named {name}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_common(case: Case, rendered: Rendered) -> None:
    """What every chart here must do."""
    for deploy in rendered.all("Deployment"):
        name = deploy["metadata"]["name"]
        spec = pod_spec(deploy)
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        expect(selects(deploy["spec"]["selector"]["matchLabels"], labels), "wiring",
               f"Deployment {name}: its selector does not match its pods")
        psc = spec.get("securityContext", {})
        expect(psc.get("runAsNonRoot") is True, "security", f"{name}: pod runAsNonRoot")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            expect(sc.get("readOnlyRootFilesystem") is True, "security", f"{name}/{c['name']}: readOnlyRootFilesystem")
            expect(sc.get("allowPrivilegeEscalation") is False, "security",
                   f"{name}/{c['name']}: allowPrivilegeEscalation false")
            expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "security", f"{name}/{c['name']}: drop ALL")
            expect("lifecycle" not in c, "lifecycle", f"{name}/{c['name']}: no preStop hook (the image has no shell)")
            expect(c.get("resources"), "resources", f"{name}/{c['name']}: resources")
            for m in c.get("volumeMounts", []):
                expect("subPath" not in m and "subPathExpr" not in m, "mounts",
                       f"{name}/{c['name']}: subPath mounts are never updated by the kubelet")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet", {})
                expect(get.get("path") == path, "probes", f"{name}/{c['name']}: {probe} on {path}")
                container_port(c, get.get("port"))
        for svc in rendered.all("Service"):
            if selects(svc["spec"].get("selector", {}), labels):
                for p in svc["spec"]["ports"]:
                    container_port(spec["containers"][0], p["targetPort"])
        pdbs = [p for p in rendered.all("PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
        want = 1 if case.values.get("podDisruptionBudget", {}).get("enabled", True) else 0
        expect(len(pdbs) == want, "objects", f"{name}: {want} PodDisruptionBudget(s) select its pods, not {len(pdbs)}")
    for svc in rendered.all("Service"):
        pods = [d for d in rendered.all("Deployment")
                if selects(svc["spec"].get("selector", {}), d["spec"]["template"]["metadata"]["labels"])]
        expect(len(pods) == 1, "wiring", f"Service {svc['metadata']['name']} selects no Deployment of this chart")


def kubelet_volume(mount: Path, key: str, text: str) -> None:
    """Writes one key the way the kubelet lays out a ConfigMap or Secret volume:
    the file in a timestamped directory, `..data` a symlink to that directory,
    and `<key>` a symlink to `..data/<key>`."""
    stamp = mount / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(exist_ok=True)
    (stamp / key).write_text(text)
    if not (mount / "..data").is_symlink():
        (mount / "..data").symlink_to(stamp.name)
    (mount / key).symlink_to(Path("..data") / key)


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    expect(m is not None, "wiring", f"duration {duration!r}")
    assert m is not None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_switchyard(case: Case, rendered: Rendered, switchyard: Path) -> None:
    deploy = rendered.one("Deployment")
    full = deploy["metadata"]["name"]
    spec = pod_spec(deploy)
    (c,) = spec["containers"]
    annotations = deploy["spec"]["template"]["metadata"].get("annotations", {})
    config_cm = rendered.one("ConfigMap", f"{full}-config")
    upstreams_cm = rendered.one("ConfigMap", f"{full}-upstreams")
    proxy_toml = config_cm["data"]["proxy.toml"]
    upstreams_toml = upstreams_cm["data"]["upstreams.toml"]
    try:
        proxy = tomllib.loads(proxy_toml)
        upstreams = tomllib.loads(upstreams_toml)
    except tomllib.TOMLDecodeError as e:
        raise CheckFailed("config", f"rendered TOML does not parse: {e}") from e

    # Ports: the container's named ports are the ones proxy.toml listens on.
    expect(proxy["listen"]["http"] == f"0.0.0.0:{container_port(c, 'http')}", "wiring", "[listen] http is the http port")
    expect(proxy["admin"]["listen"] == f"0.0.0.0:{container_port(c, 'admin')}", "wiring", "[admin] listen is the admin port")
    expect(container_port(c, "http") == 8080 and container_port(c, "admin") == 9901, "wiring", "ports 8080 and 9901")
    public = rendered.one("Service", full)
    admin = rendered.one("Service", f"{full}-admin")
    tls = case.values.get("tls", {}).get("secretName")
    want_ports = ["http", "https"] if tls else ["http"]
    expect([p["targetPort"] for p in public["spec"]["ports"]] == want_ports, "wiring",
           f"the public Service exposes {want_ports}")
    if tls:
        expect(proxy["listen"].get("https") == f"0.0.0.0:{container_port(c, 'https')}", "wiring",
               "[listen] https is the https port")
        expect(all("subPath" not in m for m in c["volumeMounts"]), "mounts",
               "no subPath mount: a renewed certificate would never reach the pod")
    else:
        expect("tls" not in proxy and "https" not in proxy["listen"], "config", "no [tls] without tls.secretName")
    expect(admin["spec"].get("clusterIP") == "None", "wiring", "the -admin Service is headless")
    expect([p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"], "wiring", "the -admin Service is the admin port")
    if public["spec"]["type"] in ("LoadBalancer", "NodePort"):
        expect(public["spec"].get("externalTrafficPolicy") == "Local" or case.values.get("service", {}).get(
            "externalTrafficPolicy") == "Cluster", "wiring", "externalTrafficPolicy Local by default")
    for probe in ("readinessProbe", "livenessProbe"):
        expect(c[probe]["httpGet"]["port"] == "admin", "probes", f"{probe} on the admin port")

    # Shutdown: the kubelet waits longer than the proxy's own delay + grace.
    budget = seconds(proxy["timeouts"]["shutdown_delay"]) + seconds(proxy["timeouts"]["shutdown"])
    expect(spec["terminationGracePeriodSeconds"] > budget, "shutdown",
           f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} <= {budget}")
    expect(seconds(proxy["timeouts"]["shutdown_delay"]) >= 5 or "shutdown" in case.values, "shutdown",
           "shutdown_delay is 5s in Kubernetes")

    # Rolling: proxy.toml changes roll the pods; upstreams.toml changes never do.
    expect("checksum/config" in annotations, "rollout", "checksum/config annotation")
    expect(not any("upstream" in k for k in annotations), "rollout", "no checksum of upstreams.toml")
    expect(proxy["admin"].get("persist") is False, "config", "persist is off on a ConfigMap mount")

    # Files: lay the volumes out as the pod sees them, under a temporary root.
    volumes = {v["name"]: v for v in spec["volumes"]}
    args = c.get("args", [])
    expect("-c" in args, "wiring", "the container passes -c proxy.toml")
    config_path = Path(args[args.index("-c") + 1])
    with tempfile.TemporaryDirectory(prefix="switchyard-chart-") as tmp:
        fake_root = Path(tmp)
        mounted: dict[str, Path] = {}
        for m in c["volumeMounts"]:
            vol = volumes[m["name"]]
            target = fake_root / m["mountPath"].lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                cm = rendered.one("ConfigMap", vol["configMap"]["name"])
                for key, text in cm["data"].items():
                    kubelet_volume(target, key, text)
                    mounted[key] = Path(m["mountPath"]) / key
            elif "secret" in vol:
                for item in vol["secret"].get("items", []):
                    kubelet_volume(target, item["path"], "test-token-0123456789\n")
                    mounted["secret:" + item["key"]] = Path(m["mountPath"]) / item["path"]
        expect(mounted.get("proxy.toml") == config_path, "mounts", f"proxy.toml is mounted at {config_path}")
        base = config_path.parent
        wanted = os.path.normpath(base / proxy["upstreams"]["file"])
        expect(mounted.get("upstreams.toml") == Path(wanted), "mounts",
               f"[upstreams] file resolves to {wanted}, not to the mounted {mounted.get('upstreams.toml')}")
        token = os.path.normpath(base / proxy["admin"]["token_file"])
        expect(mounted.get("secret:token") == Path(token), "mounts",
               f"[admin] token_file resolves to {token}, not to the mounted {mounted.get('secret:token')}")
        if tls:
            for what in ("cert", "key"):
                path = os.path.normpath(base / proxy["tls"][what])
                name = {"cert": "tls.crt", "key": "tls.key"}[what]
                expect(mounted.get("secret:" + name) == Path(path), "mounts",
                       f"[tls] {what} resolves to {path}, not to the mounted {mounted.get('secret:' + name)}")
        cfg_file = fake_root / str(config_path).lstrip("/")
        run = subprocess.run([str(switchyard), "check", "--offline", "-c", str(cfg_file)],
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            raise CheckFailed("switchyard check",
                              f"exit {run.returncode}: {(run.stderr + run.stdout).strip()}\n--- proxy.toml\n{proxy_toml}"
                              f"\n--- upstreams.toml\n{upstreams_toml}")

    # The pools: the active one exists, and the chart's Secret holds the token.
    expect(upstreams["active"] in upstreams["pools"], "config", "active is one of the pools")
    if not case.values.get("admin", {}).get("existingSecret"):
        secret = rendered.one("Secret", f"{full}-admin-token")
        expect("token" in secret.get("data", {}), "objects", "the admin token Secret has the key token")
        given = case.values.get("admin", {}).get("token")
        if given:
            import base64

            expect(base64.b64decode(secret["data"]["token"]).decode() == given, "objects", "the given token is used")

    # The ServiceMonitor scrapes the admin Service's port.
    for sm in rendered.all("ServiceMonitor"):
        expect(sm["apiVersion"] == "monitoring.coreos.com/v1", "servicemonitor", "apiVersion monitoring.coreos.com/v1")
        expect(selects(sm["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"]), "servicemonitor",
               "selects the -admin Service")
        expect(not selects(sm["spec"]["selector"]["matchLabels"], public["metadata"]["labels"]), "servicemonitor",
               "does not select the public Service")
        expect([e["port"] for e in sm["spec"]["endpoints"]] == ["admin"], "servicemonitor", "scrapes port admin")
        expect(sm["spec"]["endpoints"][0]["path"] == "/metrics", "servicemonitor", "scrapes /metrics")
    if case.values.get("serviceMonitor", {}).get("enabled"):
        expect(len(rendered.all("ServiceMonitor")) == 1, "servicemonitor", "enabled but not rendered")

    for cm in rendered.all("ConfigMap"):
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            check_dashboard(cm)


def check_dashboard(cm: dict[str, Any]) -> None:
    (text,) = cm["data"].values()
    dash = json.loads(text)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
    expect(len(exprs) >= 5, "dashboard", "the dashboard has its queries")
    used = set()
    for e in exprs:
        used |= set(re.findall(r"\bswitchyard_[a-z_]+", e))
    families = {re.sub(r"_(bucket|sum|count)$", "", m) if m not in METRICS else m for m in used}
    unknown = families - METRICS
    expect(not unknown, "dashboard", f"metrics not in docs/configuration.md: {sorted(unknown)}")
    for needed in ("switchyard_requests_total", "switchyard_request_duration_seconds_bucket",
                   "switchyard_inflight_requests", "switchyard_active_pool", "switchyard_upstream_errors_total"):
        expect(needed in used, "dashboard", f"no panel uses {needed}")
    promtool = shutil.which("promtool")
    if promtool is None:
        print("  (promtool not found: dashboard queries not parsed)")
        return
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*")}
        for i, e in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    try:
        run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    expect(run.returncode == 0, "dashboard", f"promtool check rules: {run.stdout}{run.stderr}")


def check_translation_api(case: Case, rendered: Rendered) -> None:
    colour = case.values.get("colour", "blue")
    full = f"translation-api-{colour}"
    deploy = rendered.one("Deployment", full)
    svc = rendered.one("Service", full)
    expect(svc["spec"].get("clusterIP") == "None", "wiring", f"Service {full} is headless")
    expect([(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "http")], "wiring",
           f"Service {full} serves port 8080")
    (c,) = pod_spec(deploy)["containers"]
    args = c["args"]
    expect(args[args.index("--listen") + 1] == f"0.0.0.0:{container_port(c, 'http')}", "wiring", "--listen is the http port")
    delay = seconds(args[args.index("--shutdown-delay") + 1])
    grace = seconds(args[args.index("--shutdown-grace") + 1])
    expect(pod_spec(deploy)["terminationGracePeriodSeconds"] > delay + grace, "shutdown", "grace period > delay + grace")
    expect("--trusted-proxy" in args, "wiring", "--trusted-proxy names the proxy's addresses")


def check_cross_chart(switchyard_default: Rendered, api_services: dict[str, str]) -> None:
    """The switchyard chart's default pools are the translation-api chart's Services."""
    upstreams = tomllib.loads(switchyard_default.one("ConfigMap", "switchyard-upstreams")["data"]["upstreams.toml"])
    for pool, spec in upstreams["pools"].items():
        expect(pool in api_services, "cross-chart", f"pool {pool} has no translation-api colour checked")
        expect(spec["endpoints"] == [api_services[pool]], "cross-chart",
               f"pool {pool}: {spec['endpoints']} but the translation-api chart serves {api_services[pool]}")


# ---------------------------------------------------------------- running


def run_case(case: Case, switchyard: Path) -> Rendered:
    lint(case)
    rendered = render(case)
    validate(rendered)
    check_common(case, rendered)
    if case.chart.name == "switchyard":
        check_switchyard(case, rendered, switchyard)
    elif case.chart.name == "translation-api":
        check_translation_api(case, rendered)
    return rendered


def good_cases() -> list[Case]:
    cases = []
    for chart in sorted(p.parent for p in CHARTS.glob("*/Chart.yaml")):
        files = [None] + sorted((chart / "ci").glob("*-values.yaml"))
        for f in files:
            values = {} if f is None else load_values(f)
            cases.append(Case(chart, "defaults" if f is None else f.name, values, release_name(chart, values)))
    return cases


def broken_cases() -> list[Case]:
    cases = []
    for f in sorted(BROKEN.glob("*.yaml")):
        header = dict(re.findall(r"^# (chart|expect-stage|expect-message): (.+)$", f.read_text(), re.M))
        missing = {"chart", "expect-stage", "expect-message"} - header.keys()
        if missing:
            raise SystemExit(f"{f}: the header lacks {sorted(missing)}")
        values = load_values(f)
        chart = CHARTS / header["chart"].strip()
        cases.append(Case(chart, f.name, values, release_name(chart, values),
                          header["expect-stage"].strip(), header["expect-message"].strip()))
    return cases


def mutated_chart_case(tmp: Path) -> Case:
    """The switchyard chart with `replicas:` misspelt in its Deployment template."""
    chart = tmp / "switchyard"
    shutil.copytree(CHARTS / "switchyard", chart)
    deployment = chart / "templates" / "deployment.yaml"
    text = deployment.read_text()
    mutated = text.replace("  replicas: {{", "  replica: {{", 1)
    if mutated == text:
        raise SystemExit("the mutation found no `replicas:` in the switchyard Deployment template")
    deployment.write_text(mutated)
    return Case(chart, "templates/deployment.yaml with replicas misspelt", {}, "switchyard", "validate", "replica")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switchyard", required=True, type=Path, help="the switchyard binary (for `check --offline`)")
    args = parser.parse_args()
    if not args.switchyard.is_file():
        print(f"no switchyard binary at {args.switchyard}", file=sys.stderr)
        return 2
    helm.disable_logging()
    passed, failed = 0, 0
    rendered: dict[tuple[str, str], Rendered] = {}

    def report(ok: bool, label: str, detail: str = "") -> None:
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok    {label}{detail}")
        else:
            failed += 1
            print(f"FAIL  {label}{detail}")

    for case in good_cases():
        label = f"{case.chart.name} [{case.name}]"
        try:
            rendered[(case.chart.name, case.name)] = run_case(case, args.switchyard)
            report(True, label)
        except CheckFailed as e:
            report(False, label, f": {e}")

    # The default pools point at what the translation-api chart really creates.
    try:
        services = {}
        for colour in ("blue", "green"):
            values = {"colour": colour}
            r = render(Case(CHARTS / "translation-api", f"colour {colour}", values, release_name(CHARTS / "translation-api", values)))
            svc = r.one("Service")
            services[colour] = f"{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
        default = rendered.get(("switchyard", "defaults"))
        expect(default is not None, "cross-chart", "the switchyard defaults did not render")
        assert default is not None
        check_cross_chart(default, services)
        report(True, "switchyard default pools = translation-api Services")
    except CheckFailed as e:
        report(False, "switchyard default pools = translation-api Services", f": {e}")

    # The checks can fail: every broken fixture must fail where it says.
    with tempfile.TemporaryDirectory(prefix="switchyard-mutated-") as tmp:
        for case in broken_cases() + [mutated_chart_case(Path(tmp))]:
            label = f"{case.chart.name} [{case.name}] must fail at {case.expect_stage}"
            try:
                run_case(case, args.switchyard)
                report(False, label, ": it passed every check")
            except CheckFailed as e:
                ok = e.stage == case.expect_stage and (case.expect_message or "") in e.message
                report(ok, label, "" if ok else f": failed elsewhere: {e}")

    print(f"chart checks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
