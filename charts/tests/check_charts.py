#!/usr/bin/env python3
"""The chart checks of `cargo xtask test`: offline, no cluster, no helm binary.

For every chart under charts/ and every value file (the chart's defaults,
each charts/<chart>/ci/*-values.yaml, and the values of each `helm install` /
`helm upgrade` command of the walk-through in docs/kubernetes.md, in order,
`--reuse-values` included), this:

1. lints the chart (Helm's own linter, strict, values schema included);
2. renders it the way `helm template` does (an install dry run with Helm's
   SDK: values.schema.json, kubeVersion, YAML validity, NOTES.txt);
3. renders it a second time and requires the same manifest (no random or
   looked-up value: `helm template`, as Argo CD runs it, renders on every sync),
   and finds no `lookup` or random function in any template;
4. validates every object strictly against the Kubernetes schemas of each
   version in KUBE_VERSIONS (a misspelt field fails; custom resources that
   have no schema here, the ServiceMonitor, are skipped by name and checked
   by hand);
5. checks what ties the objects together: selectors, named ports, probes,
   the admin and data ports against proxy.toml, mounts (never subPath), the
   checksum that rolls the pods on a proxy.toml change and its absence for
   upstreams.toml, the grace period against the shutdown timings, the
   dashboard's queries (promtool) and metric names; for switchyard, the
   NetworkPolicy (present unless networkPolicy.enabled=false; the data port
   open to all, the admin port only from the namespace, Prometheus and
   networkPolicy.extraAdminFrom; ingress only) and the admin token (exactly
   one of admin.existingSecret, whose Secret the walk-through creates with
   the key `token`, and admin.token, which the chart's Secret holds);
6. for switchyard: writes the rendered proxy.toml, upstreams.toml and token
   where the pod mounts them (under a temporary root, in the kubelet's
   `..data` symlink layout) and runs
   `switchyard check --offline` on them; and checks that the default pools
   name the Services the translation-api chart creates;
7. labels and day 2: the full app.kubernetes.io label set and helm.sh/chart
   on every object, hooks included; no Service, PodDisruptionBudget or
   Deployment selecting a hook's pods; the ServiceAccount, extraEnv, the
   restricted security contexts; for switchyard min_healthy per pool in
   upstreams.toml, [runtime] cores from the CPU limit, the zone spread, the
   HPA, and the PrometheusRule (`promtool check rules`);
8. hooks (rendered with Helm's template engine: an install's manifest has
   none): the switch Job and the `helm test` Pod validate strictly, are
   restricted, mount no API token, clean up after themselves, and their
   command lines are the expected ones.

Then, with real processes (charts/tests/live.py): the hook Job's and the test
Pod's rendered command lines are run against three switchyard replicas
behind a loopback DNS server answering the admin Service's name, through
install, `helm upgrade --set active=green`, an override kept by an upgrade
that leaves `active` alone, and `helm rollback`; and every metric name the
PrometheusRule and the dashboard use must be in a real `/metrics` scrape.
Each chart's README.md must hold the values table its values.yaml's comments
give (`--write-readme` rewrites it).

Then it proves that the checks can fail: every fixture in charts/tests/broken
must fail at the stage its header names, with the message it names (the
switchyard chart's bare defaults among them: they give no admin token), and
so must the switchyard chart with a field of its Deployment template
misspelt, with a random token as the fallback of its Secret, with a hook
Job that forgets --if-file-differs (the live run), and with an alert on a
metric the proxy does not export.

usage: check_charts.py --switchyard PATH/TO/switchyard
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import math
import os
import re
import shlex
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

import live

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "charts"
BROKEN = Path(__file__).resolve().parent / "broken"
WALKTHROUGH = ROOT / "docs" / "kubernetes.md"
# The shell variables of the walk-through's commands, as a reader has them.
WALKTHROUGH_VARS = {"TAG": "local-0123abcd"}
# Charts whose defaults alone must not render (the operator has to give a
# value): the broken fixture that proves it, instead of a "defaults" case.
DEFAULTS_FAIL = {"switchyard": "switchyard-no-admin-token.yaml"}
# Template functions whose result depends on the moment or on the cluster:
# a render by `helm template` (Argo CD) would differ from the install.
NONDETERMINISTIC = re.compile(
    r"\b(lookup|randAlphaNum|randAlpha|randNumeric|randAscii|randBytes|randInt|uuidv4|now|unixEpoch|"
    r"genPrivateKey|genCA|genCAWithKey|genSelfSignedCert|genSelfSignedCertWithKey|genSignedCert|"
    r"genSignedCertWithKey|derivePassword)\b")
NAMESPACE = "switchyard-test"
# The oldest Kubernetes the checks hold the charts to, and the newest the
# schemas know.
KUBE_VERSIONS = ["1.31.0", "1.37.0"]
# Kinds with no schema in kubernetes-validate; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The label set every object of every chart carries (Kubernetes' recommended
# labels and Helm's chart label).
LABELS = ["helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"]
HOOK = "helm.sh/hook"
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
    "switchyard_pool_endpoints",
    "switchyard_pool_panic",
    "switchyard_discovery_errors_total",
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
    # Secrets that exist before the install (the walk-through's `kubectl
    # create secret generic`): name -> keys.
    secrets: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Rendered:
    manifest: str
    notes: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    # Objects with a helm.sh/hook annotation (not in an install's manifest).
    hooks: list[dict[str, Any]] = field(default_factory=list)

    def hook(self, kind: str, event: str) -> list[dict[str, Any]]:
        return [d for d in self.hooks if d["kind"] == kind
                and event in d["metadata"].get("annotations", {}).get(HOOK, "").split(",")]

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


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values: maps deep, `null` deletes the key, the rest replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values given over values (`--reuse-values`): maps deep, `null` kept as a value."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def effective_values(case: Case) -> dict[str, Any]:
    """The values the templates see: the chart's values.yaml with the case's on top."""
    return merge(load_values(case.chart / "values.yaml"), case.values)


# ---------------------------------------------------------------- the walk-through


def set_value(values: dict[str, Any], path: str, raw: str, where: str, string: bool = False) -> None:
    """One `--set key=value` (the part of Helm's strvals the docs may use)."""
    if re.search(r"[\\\[\]]", path) or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_/-]+)*", path):
        raise SystemExit(f"{where}: --set {path}=...: this check does not parse that key")

    def typed(v: str) -> Any:
        if string:
            return v
        if v == "null":
            return None
        if v in ("true", "false"):
            return v == "true"
        if re.fullmatch(r"-?[0-9]+", v):
            return int(v)
        return v

    if raw.startswith("{") and raw.endswith("}"):
        value: Any = [typed(v) for v in raw[1:-1].split(",") if v]
    elif "," in raw:
        raise SystemExit(f"{where}: --set {path}={raw}: give one value per --set")
    else:
        value = typed(raw)
    keys = path.split(".")
    node = values
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise SystemExit(f"{where}: --set {path}: {k} is not a map")
    node[keys[-1]] = value


def expand(word: str, where: str) -> str:
    """$VAR and ${VAR} from WALKTHROUGH_VARS; any other expansion is an error."""
    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in WALKTHROUGH_VARS:
            raise SystemExit(f"{where}: ${name} is not in WALKTHROUGH_VARS of {Path(__file__).name}")
        return WALKTHROUGH_VARS[name]

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", var, word)
    if "$" in out or "`" in out:
        raise SystemExit(f"{where}: {word}: this check does not expand that")
    return out


def fenced_commands(path: Path) -> list[tuple[int, str]]:
    """The shell commands of the ```sh / ```bash blocks under a Markdown
    file's numbered steps (`## 3. ...`): (line, command), continuations joined."""
    commands = []
    lines = path.read_text().splitlines()
    i = 0
    in_step = False
    while i < len(lines):
        if lines[i].startswith("## "):
            in_step = re.match(r"## [0-9]+\. ", lines[i]) is not None
        if in_step and re.fullmatch(r"```(sh|bash)", lines[i].strip()):
            i += 1
            pending, start = "", 0
            while i < len(lines) and lines[i].strip() != "```":
                line = lines[i]
                if not pending:
                    start = i + 1
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                else:
                    cmd = (pending + line).strip()
                    pending = ""
                    if cmd and not cmd.startswith("#"):
                        commands.append((start, cmd))
                i += 1
        i += 1
    return commands


def walkthrough_cases() -> list[Case]:
    """A case per `helm install` / `helm upgrade` of docs/kubernetes.md's steps, with
    the values that release has at that step, and the Secrets its earlier
    `kubectl create secret generic` commands made."""
    cases: list[Case] = []
    releases: dict[str, dict[str, Any]] = {}
    secrets: dict[str, set[str]] = {}
    doc = WALKTHROUGH.relative_to(ROOT)
    for line, cmd in fenced_commands(WALKTHROUGH):
        where = f"{doc}:{line}"
        if not cmd.startswith(("helm install ", "helm upgrade ", "kubectl create secret ")):
            continue
        try:
            words = shlex.split(cmd)
        except ValueError as e:
            raise SystemExit(f"{where}: {e}") from e
        if words[:4] == ["kubectl", "create", "secret", "generic"]:
            keys = set()
            for w in words[5:]:
                m = re.fullmatch(r"--from-(literal|file)=([^=]+)=.*", w, re.S)
                if m:
                    keys.add(m.group(2))
                elif w.startswith("-"):
                    raise SystemExit(f"{where}: kubectl create secret: this check does not know {w}")
            secrets[words[4]] = keys
            continue
        if words[:3] == ["kubectl", "create", "secret"]:
            raise SystemExit(f"{where}: only `kubectl create secret generic` is understood here")
        verb, release, chart = words[1], words[2], words[3]
        if not chart.startswith("charts/") or not (ROOT / chart / "Chart.yaml").is_file():
            raise SystemExit(f"{where}: {chart} is not a chart of this repository")
        sets: dict[str, Any] = {}
        reuse = False
        rest = iter(words[4:])
        for w in rest:
            if w in ("--set", "--set-string"):
                kv = expand(next(rest, ""), where)
                key, eq, raw = kv.partition("=")
                if not eq:
                    raise SystemExit(f"{where}: --set {kv}: no `=`")
                set_value(sets, key, raw, where, string=w == "--set-string")
            elif w == "--reuse-values":
                reuse = True
            elif w in ("--wait", "--atomic"):
                pass
            else:
                raise SystemExit(f"{where}: helm {verb}: this check does not know {w}")
        if verb == "install":
            if release in releases:
                raise SystemExit(f"{where}: release {release} is installed twice")
            values = sets
        else:
            if release not in releases:
                raise SystemExit(f"{where}: helm upgrade of {release}, which no earlier step installs")
            # --reuse-values: the new values over the release's, a `null` kept
            # (it goes on deleting the chart's default at every upgrade).
            values = overlay(releases[release], sets) if reuse else sets
        releases[release] = values
        cases.append(Case(ROOT / chart, f"{doc}:{line} helm {verb} {release}", copy.deepcopy(values), release,
                          secrets=copy.deepcopy(secrets)))
    if not any(c.chart.name == "switchyard" for c in cases):
        raise SystemExit(f"{doc}: no `helm install ... charts/switchyard` found in its sh/bash blocks")
    return cases


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
    # Hooks are not in the manifest: Helm's template engine renders them
    # with the same values (the release's checks above already passed).
    try:
        chart = helm.Chart.load(str(case.chart))
        files = chart.render(case.values, name=case.release, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        raise CheckFailed("render", f"hooks: {e}") from e
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as e:
            raise CheckFailed("render", f"{path} is not YAML: {e}") from e
        rendered.hooks += [d for d in docs if HOOK in (d.get("metadata", {}).get("annotations") or {})]
    in_manifest = [d for d in rendered.docs if HOOK in (d.get("metadata", {}).get("annotations") or {})]
    if in_manifest:
        raise CheckFailed("render", f"hooks in the manifest: {[d['metadata']['name'] for d in in_manifest]}")
    return rendered


def deterministic(case: Case, first: Rendered) -> None:
    """A second render gives the same objects; no template can make it differ."""
    second = render(case)
    if second.hooks != first.hooks:
        raise CheckFailed("determinism", "two renders differ: the hooks")
    if second.manifest != first.manifest:
        def objects(r: Rendered) -> dict[str, Any]:
            return {f"{d['kind']}/{d['metadata']['name']}": d for d in r.docs}

        a, b = objects(first), objects(second)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        raise CheckFailed("determinism", f"two renders differ: {', '.join(differ) or 'the manifest text'}")
    for template in sorted(p for p in (case.chart / "templates").rglob("*") if p.is_file()):
        # Template actions only, comments dropped.
        text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", template.read_text(), flags=re.S)
        for action in re.findall(r"\{\{.*?\}\}", text, re.S):
            code = re.sub(r'"(?:\\.|[^"\\])*"|`[^`]*`', '""', action)
            m = NONDETERMINISTIC.search(code)
            if m:
                raise CheckFailed("determinism", f"{template.relative_to(case.chart)} calls {m.group(1)}: "
                                                 "a render by helm template would differ from the cluster's")


def validate(rendered: Rendered) -> None:
    for doc in rendered.docs + rendered.hooks:
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


def restricted(what: str, pod: dict[str, Any]) -> None:
    """The restricted Pod Security Standard's settings, on a pod spec."""
    psc = pod.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True, "security", f"{what}: pod runAsNonRoot")
    expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "security", f"{what}: seccomp RuntimeDefault")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        expect(sc.get("readOnlyRootFilesystem") is True, "security", f"{what}/{c['name']}: readOnlyRootFilesystem")
        expect(sc.get("allowPrivilegeEscalation") is False, "security",
               f"{what}/{c['name']}: allowPrivilegeEscalation false")
        expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "security", f"{what}/{c['name']}: drop ALL")
        expect(c.get("resources"), "resources", f"{what}/{c['name']}: resources")


def check_labels(case: Case, rendered: Rendered) -> None:
    """Every object, hooks included, has the full label set; the pods no
    Service or PodDisruptionBudget of the chart is meant for are not selected by one."""
    chart = yaml.safe_load((case.chart / "Chart.yaml").read_text())
    for doc in rendered.docs + rendered.hooks:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        labels = doc["metadata"].get("labels") or {}
        missing = [k for k in LABELS if not labels.get(k)]
        expect(not missing, "labels", f"{what} lacks {missing}")
        expect(labels["app.kubernetes.io/instance"] == case.release, "labels", f"{what}: instance {case.release}")
        expect(labels["app.kubernetes.io/managed-by"] == "Helm", "labels", f"{what}: managed-by Helm")
        expect(labels["app.kubernetes.io/version"] == str(chart["appVersion"]), "labels", f"{what}: version")
        expect(labels["helm.sh/chart"] == f"{chart['name']}-{chart['version']}", "labels", f"{what}: helm.sh/chart")
    hook_pods = [(d["metadata"]["name"], d["spec"]["template"]["metadata"].get("labels", {})) for d in rendered.hooks
                 if d["kind"] == "Job"]
    hook_pods += [(d["metadata"]["name"], d["metadata"].get("labels", {})) for d in rendered.hooks if d["kind"] == "Pod"]
    for name, labels in hook_pods:
        for kind in ("Service", "PodDisruptionBudget", "Deployment"):
            for d in rendered.all(kind):
                sel = d["spec"].get("selector", {})
                sel = sel.get("matchLabels", {}) if kind != "Service" else sel
                expect(not selects(sel, labels), "labels",
                       f"{kind} {d['metadata']['name']} selects the pods of hook {name}")


def check_common(case: Case, rendered: Rendered) -> None:
    """What every chart here must do."""
    check_labels(case, rendered)
    for hook in rendered.hooks:
        pod = hook["spec"]["template"]["spec"] if hook["kind"] == "Job" else hook["spec"]
        what = f"{hook['kind']} {hook['metadata']['name']}"
        restricted(what, pod)
        expect(pod.get("automountServiceAccountToken") is False, "security", f"{what}: no service account token")
        expect(pod.get("restartPolicy") == "Never", "hooks", f"{what}: restartPolicy Never")
        policy = hook["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "").split(",")
        expect("hook-succeeded" in policy and "before-hook-creation" in policy, "hooks",
               f"{what}: hook-delete-policy before-hook-creation,hook-succeeded (it cleans up)")
    for deploy in rendered.all("Deployment"):
        name = deploy["metadata"]["name"]
        spec = pod_spec(deploy)
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        expect(selects(deploy["spec"]["selector"]["matchLabels"], labels), "wiring",
               f"Deployment {name}: its selector does not match its pods")
        restricted(name, spec)
        values = effective_values(case)
        sa = values.get("serviceAccount", {})
        if sa.get("create"):
            account = rendered.one("ServiceAccount")
            expect(spec.get("serviceAccountName") == account["metadata"]["name"], "serviceaccount",
                   f"{name}: runs as the chart's ServiceAccount {account['metadata']['name']}")
            expect(account.get("automountServiceAccountToken") is bool(sa.get("automount")), "serviceaccount",
                   "the ServiceAccount's automount is serviceAccount.automount")
        elif "serviceAccount" in values:
            expect(not rendered.all("ServiceAccount"), "serviceaccount", "serviceAccount.create=false renders none")
            expect(spec.get("serviceAccountName") == (sa.get("name") or "default"), "serviceaccount",
                   f"{name}: serviceAccountName is serviceAccount.name or default")
        if "serviceAccount" in values:
            expect(spec.get("automountServiceAccountToken") is bool(sa.get("automount")), "serviceaccount",
                   f"{name}: automountServiceAccountToken is serviceAccount.automount (off by default)")
        for c in spec["containers"]:
            expect("lifecycle" not in c, "lifecycle", f"{name}/{c['name']}: no preStop hook (the image has no shell)")
            if "extraEnv" in values:
                env = c.get("env", [])
                expect(all(e in env for e in values["extraEnv"]), "env", f"{name}/{c['name']}: extraEnv is in env")
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

    # The pools: the active one exists.
    expect(upstreams["active"] in upstreams["pools"], "config", "active is one of the pools")
    values = effective_values(case)
    check_fleet_objects(rendered, deploy, values, proxy, upstreams, volumes["admin-token"])
    check_admin_token(case, rendered, values, volumes["admin-token"])
    check_network_policy(rendered, deploy, c, values)

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


def admin_dns_of(rendered: Rendered, values: dict[str, Any]) -> str:
    """The headless admin Service's fully qualified name (root dot) and port."""
    full = rendered.one("Deployment")["metadata"]["name"]
    admin = rendered.one("Service", f"{full}-admin")
    (port,) = [p["port"] for p in admin["spec"]["ports"]]
    return f"{admin['metadata']['name']}.{NAMESPACE}.svc.{values['clusterDomain'].rstrip('.')}.:{port}"


def hook_args(rendered: Rendered) -> tuple[list[str], str]:
    """The switch hook Job's container args, and where it mounts the token file."""
    (job,) = rendered.hook("Job", "post-upgrade")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    (mount,) = c["volumeMounts"]
    return c["args"], f"{mount['mountPath']}/token"


def test_args(rendered: Rendered) -> list[str]:
    (pod,) = rendered.hook("Pod", "test")
    (c,) = pod["spec"]["containers"]
    return c["args"]


def check_fleet_objects(rendered: Rendered, deploy: dict[str, Any], values: dict[str, Any], proxy: dict[str, Any],
                        upstreams: dict[str, Any], token_volume: dict[str, Any]) -> None:
    """The hook Job and the test Pod (their exact command lines), min_healthy,
    [runtime] cores, the spread over zones, the HPA and the PrometheusRule."""
    spec = pod_spec(deploy)
    (c,) = spec["containers"]
    dns = admin_dns_of(rendered, values)
    active = values["active"]
    hooks = values["switchHook"]
    jobs = [d for d in rendered.hooks if d["kind"] == "Job"]
    if not hooks["enabled"]:
        expect(not jobs, "hooks", "switchHook.enabled=false renders no hook Job")
    else:
        expect(len(jobs) == 1, "hooks", f"one hook Job, not {len(jobs)}")
        (job,) = jobs
        events = set(job["metadata"]["annotations"][HOOK].split(","))
        expect(events == {"post-install", "post-upgrade", "post-rollback"}, "hooks",
               f"the switch Job runs post-install, post-upgrade and post-rollback, not {sorted(events)}")
        expect(job["spec"].get("backoffLimit") == hooks["backoffLimit"]
               and job["spec"].get("activeDeadlineSeconds") == hooks["activeDeadlineSeconds"], "hooks",
               "the Job's backoffLimit and activeDeadlineSeconds are the values'")
        pod = job["spec"]["template"]["spec"]
        (jc,) = pod["containers"]
        expect(jc["image"] == c["image"], "hooks", "the Job runs the proxy's image")
        args, token_path = hook_args(rendered)
        want = ["switch", active, "--admin-dns", dns, "--if-file-differs", "--timeout", hooks["timeout"],
                "--token-file", token_path]
        expect(args == want, "hooks", f"the Job runs {args}, not {want}")
        (vol,) = pod["volumes"]
        expect(vol["secret"] == token_volume["secret"], "hooks", "the Job mounts the proxy's admin token Secret")
        expect(seconds(hooks["timeout"]) < hooks["activeDeadlineSeconds"], "hooks",
               "switchHook.timeout is below activeDeadlineSeconds")
    tests = rendered.hook("Pod", "test")
    expect(len(tests) == 1, "hooks", f"one helm test Pod, not {len(tests)}")
    (tc,) = tests[0]["spec"]["containers"]
    expect(tc["image"] == c["image"], "hooks", "the test Pod runs the proxy's image")
    want = ["status", "--admin-dns", dns, "--expect", active]
    expect(test_args(rendered) == want, "hooks", f"the test Pod runs {test_args(rendered)}, not {want}")

    # min_healthy per pool, as given.
    for name, pool in values["pools"].items():
        if pool is not None and "minHealthy" in pool:
            expect(upstreams["pools"][name].get("min_healthy") == pool["minHealthy"], "config",
                   f"pools.{name}.minHealthy={pool['minHealthy']!r}: upstreams.toml has "
                   f"{upstreams['pools'][name].get('min_healthy')!r}")
        else:
            expect("min_healthy" not in upstreams["pools"][name], "config", f"pool {name}: no min_healthy unless given")

    # [runtime] cores: the ceiling of the CPU limit, at least 1.
    cpu = ((values.get("resources") or {}).get("limits") or {}).get("cpu")
    if cpu is None:
        expect("runtime" not in proxy, "config", "no [runtime] without a CPU limit")
    else:
        text = str(cpu)
        want_cores = max(1, math.ceil(int(text[:-1]) / 1000 if text.endswith("m") else float(text)))
        expect(proxy.get("runtime", {}).get("cores") == want_cores, "config",
               f"resources.limits.cpu={cpu}: [runtime] cores {proxy.get('runtime')} != {want_cores}")

    # Spread over zones (by default), each constraint on the proxy's pods.
    spread = spec.get("topologySpreadConstraints", [])
    expect(len(spread) == len(values["topologySpreadConstraints"]), "spread", "one constraint per value entry")
    for t in spread:
        expect(t.get("labelSelector", {}).get("matchLabels") == deploy["spec"]["selector"]["matchLabels"]
               or "labelSelector" in next(v for v in values["topologySpreadConstraints"]
                                          if v["topologyKey"] == t["topologyKey"]),
               "spread", f"the {t['topologyKey']} constraint selects the proxy's pods")
    if values["topologySpreadConstraints"] == load_values(CHARTS / "switchyard" / "values.yaml")["topologySpreadConstraints"]:
        expect([(t["topologyKey"], t["whenUnsatisfiable"]) for t in spread]
               == [("topology.kubernetes.io/zone", "ScheduleAnyway")], "spread", "spread over zones by default")

    # The HPA replaces the replica count.
    hpas = rendered.all("HorizontalPodAutoscaler")
    if values["autoscaling"]["enabled"]:
        expect(len(hpas) == 1 and "replicas" not in deploy["spec"], "autoscaling",
               "autoscaling.enabled: one HPA, and no replicas in the Deployment")
        target = hpas[0]["spec"]["scaleTargetRef"]
        expect((target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"]), "autoscaling",
               "the HPA scales the proxy's Deployment")
    else:
        expect(not hpas and deploy["spec"].get("replicas") == values["replicaCount"], "autoscaling",
               "no HPA unless autoscaling.enabled; replicas is replicaCount")

    rules = rendered.all("PrometheusRule")
    expect(len(rules) == (1 if values["prometheusRule"]["enabled"] else 0), "prometheusrule",
           "one PrometheusRule exactly when prometheusRule.enabled")
    for rule in rules:
        check_prometheus_rule(rule)


def rule_metrics(rule: dict[str, Any]) -> set[str]:
    """The metric names a PrometheusRule's expressions use."""
    names = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            names |= set(re.findall(r"\bswitchyard_[a-z_]+", r["expr"]))
    return names


def check_prometheus_rule(rule: dict[str, Any]) -> None:
    """promtool check rules on the rule's groups; the five alerts are there."""
    alerts = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
    want = {"SwitchyardReplicasDisagree", "SwitchyardOverrideNotDurable", "SwitchyardConfigReloadErrors",
            "SwitchyardActivePool5xx", "SwitchyardActivePoolNotReady"}
    expect(want <= alerts, "prometheusrule", f"missing alerts: {sorted(want - alerts)}")
    used = rule_metrics(rule)
    for needed in ("switchyard_active_pool", "switchyard_admin_override", "switchyard_config_reloads_total",
                   "switchyard_requests_total", "switchyard_pool_ready"):
        expect(needed in used, "prometheusrule", f"no alert uses {needed}")
    promtool = shutil.which("promtool")
    expect(promtool is not None, "prometheusrule", "promtool not found (Debian's prometheus package ships it)")
    assert promtool is not None
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, f)
    try:
        run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    expect(run.returncode == 0, "prometheusrule", f"promtool check rules: {run.stdout}{run.stderr}")


def check_admin_token(case: Case, rendered: Rendered, values: dict[str, Any], volume: dict[str, Any]) -> None:
    """Exactly one of admin.existingSecret and admin.token (the templates fail otherwise); the pods mount that Secret."""
    full = rendered.one("Deployment")["metadata"]["name"]
    existing = values["admin"].get("existingSecret")
    token = values["admin"].get("token")
    secrets = rendered.all("Secret")
    mounted = volume["secret"]["secretName"]
    expect(bool(existing) != bool(token), "admin token", "exactly one of admin.existingSecret and admin.token")
    if existing:
        expect(not secrets, "admin token", f"admin.existingSecret: the chart renders no Secret, not {len(secrets)}")
        expect(mounted == existing, "admin token", f"the pods mount Secret {mounted}, not admin.existingSecret {existing}")
        if case.secrets:
            # The walk-through: an earlier step creates that Secret, with the key token.
            expect(existing in case.secrets, "admin token",
                   f"admin.existingSecret={existing}: no earlier `kubectl create secret generic {existing}`"
                   f" (created: {sorted(case.secrets)})")
            expect("token" in case.secrets[existing], "admin token",
                   f"Secret {existing} is created without the key token")
    else:
        secret = rendered.one("Secret", f"{full}-admin-token")
        expect(mounted == secret["metadata"]["name"], "admin token", f"the pods mount Secret {mounted}")
        expect(base64.b64decode(secret["data"]["token"]).decode() == token, "admin token", "the Secret holds admin.token")
        expect(secret["metadata"]["labels"] == rendered.one("Deployment")["metadata"]["labels"], "labels",
               "the Secret has the chart's full label set")


def check_network_policy(rendered: Rendered, deploy: dict[str, Any], c: dict[str, Any], values: dict[str, Any]) -> None:
    """Ingress only: the data port from everywhere, the admin port from the
    namespace, Prometheus and networkPolicy.extraAdminFrom."""
    policies = rendered.all("NetworkPolicy")
    np = values["networkPolicy"]
    if not np.get("enabled"):
        expect(not policies, "networkpolicy", f"networkPolicy.enabled=false, yet {len(policies)} NetworkPolicy rendered")
        return
    expect(len(policies) == 1, "networkpolicy", f"networkPolicy.enabled: one NetworkPolicy, not {len(policies)}")
    (pol,) = policies
    spec = pol["spec"]
    full = deploy["metadata"]["name"]
    expect(pol["metadata"]["name"] == full, "networkpolicy", f"named {full}")
    expect(pol["metadata"].get("labels") == deploy["metadata"]["labels"], "labels",
           "the NetworkPolicy has the chart's full label set")
    expect(spec["podSelector"].get("matchLabels") == deploy["spec"]["selector"]["matchLabels"]
           and not spec["podSelector"].get("matchExpressions"), "networkpolicy",
           "its podSelector is the Deployment's selector")
    expect(spec.get("policyTypes") == ["Ingress"] and "egress" not in spec, "networkpolicy",
           "ingress only (egress to DNS and the upstreams stays open)")
    http, admin = container_port(c, "http"), container_port(c, "admin")
    rules = spec.get("ingress", [])
    expect(len(rules) == 2, "networkpolicy", f"two ingress rules (data, admin), not {len(rules)}")
    for rule in rules:
        for p in rule.get("ports", []):
            expect(p.get("port") in (http, admin) and p.get("protocol", "TCP") == "TCP", "networkpolicy",
                   f"port {p.get('port')} is neither the http ({http}) nor the admin ({admin}) container port")
    data_rule, admin_rule = rules
    expect(data_rule.get("ports") == [{"port": http, "protocol": "TCP"}], "networkpolicy",
           f"the first rule is the data port {http} alone")
    expect("from" not in data_rule, "networkpolicy", "the data port is open to every source")
    expect(admin_rule.get("ports") == [{"port": admin, "protocol": "TCP"}], "networkpolicy",
           f"the second rule is the admin port {admin} alone")
    prometheus = np["prometheus"]
    want = [{"podSelector": {}},
            {"namespaceSelector": prometheus["namespaceSelector"], "podSelector": prometheus["podSelector"]}]
    want += np.get("extraAdminFrom") or []
    expect(admin_rule.get("from") == want, "networkpolicy",
           f"the admin port admits the namespace, Prometheus and extraAdminFrom: {admin_rule.get('from')} != {want}")


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
    """The switchyard chart's default pools are the translation-api chart's headless
    Services, as fully qualified names (trailing dot) in the release namespace."""
    upstreams = tomllib.loads(switchyard_default.one("ConfigMap", "switchyard-upstreams")["data"]["upstreams.toml"])
    for pool, spec in upstreams["pools"].items():
        expect(pool in api_services, "cross-chart", f"pool {pool} has no translation-api colour checked")
        name, port = api_services[pool].rsplit(":", 1)
        want = f"{name}.{NAMESPACE}.svc.cluster.local.:{port}"
        expect(spec.get("dns") == want, "cross-chart",
               f"pool {pool}: {spec} but the translation-api chart serves {want}")


# ---------------------------------------------------------------- README values tables

README_START = "<!-- values table: generated from values.yaml by charts/tests/check_charts.py --write-readme -->"
README_END = "<!-- end of the values table -->"


def values_rows(chart: Path) -> list[tuple[str, Any, str]]:
    """(key path, default, description) for every key of values.yaml: the
    description is the comment block right above the key (no blank line
    between). Maps appear when they have a comment of their own; keys inside
    a list's items are part of that list's default."""
    text = (chart / "values.yaml").read_text()
    data = yaml.safe_load(text) or {}
    rows: list[tuple[str, Any, str]] = []
    comment: list[str] = []
    stack: list[tuple[int, str]] = []
    skip_below: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_below is not None:
            if stripped and (indent > skip_below or (indent == skip_below and stripped.startswith("- "))):
                continue
            skip_below = None
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^( *)([A-Za-z0-9_.-]+):(\s|$)", line)
        if not m:
            comment = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [m.group(2)]
        value: Any = data
        for k in path:
            value = value[k]
        described = " ".join(comment).strip()
        if not isinstance(value, dict) or not value or described:
            rows.append((".".join(path), value, described))
        if isinstance(value, list) and value:
            skip_below = indent
        stack.append((indent, m.group(2)))
        comment = []
    return rows


def values_table(chart: Path) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = ["| key | default | description |", "| --- | --- | --- |"]
    for key, value, described in values_rows(chart):
        default = "" if isinstance(value, dict) and value else f"`{cell(json.dumps(value))}`"
        out.append(f"| `{key}` | {default} | {cell(described)} |")
    return "\n".join(out)


def readme_with_table(chart: Path) -> str:
    """The chart's README.md with its values table as values.yaml gives it now."""
    readme = chart / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme.relative_to(ROOT)}: no values table markers ({README_START} ... {README_END})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n\n{values_table(chart)}\n\n{README_END}{tail}"


def check_readme(chart: Path) -> None:
    """The committed README.md's values table is the one values.yaml gives, and every value is described."""
    undescribed = [k for k, v, d in values_rows(chart) if not d and "." not in k]
    expect(not undescribed, "readme", f"{chart.name}/values.yaml: no comment above {undescribed}")
    readme = chart / "README.md"
    expect(readme.is_file() and readme.read_text() == readme_with_table(chart), "readme",
           f"{readme.relative_to(ROOT)} is not current: run "
           "target/venv/bin/python charts/tests/check_charts.py --switchyard target/debug/switchyard --write-readme")


# ---------------------------------------------------------------- real processes


def check_fleet_live(switchyard: Path, install: Case) -> None:
    """The hook Job's and the test Pod's command lines, exactly as rendered
    for the walk-through's release, run against three real replicas behind
    a real DNS name (the headless admin Service's), through the walk-through's
    life: install, `helm upgrade --set active=green`, the ConfigMap
    arriving, an emergency switch kept by an upgrade that leaves `active`
    alone, and `helm rollback` to blue."""
    def rendered_for(active: str) -> Rendered:
        values = merge(install.values, {"active": active})
        return render(Case(install.chart, f"active={active}", values, install.release, secrets=install.secrets))

    blue, green = rendered_for("blue"), rendered_for("green")
    values = effective_values(install)
    dns = admin_dns_of(green, values)
    name, port = dns.rsplit(":", 1)
    hook_blue, token_path = hook_args(blue)
    hook_green, _ = hook_args(green)
    test_blue, test_green = test_args(blue), test_args(green)

    with live.Fleet(switchyard, name, int(port)) as fleet:
        def run(args: list[str], want: int, step: str) -> str:
            code, out = fleet.run(switchyard, args, dns, token_path)
            expect((code == 0) == (want == 0), "fleet", f"{step}: {' '.join(args)} exited {code}, want {want}:\n{out}")
            return out

        def actives(want: list[str], step: str) -> None:
            now = fleet.actives()
            expect(now == want, "fleet", f"{step}: the replicas serve {now}, not {want}")

        step = "helm install (every file names blue)"
        out = run(hook_blue, 0, step)
        expect(out.count("skipped") == 3, "fleet", f"{step}: the hook leaves all three alone:\n{out}")
        run(test_blue, 0, f"{step}, helm test")

        step = "helm upgrade --set active=green (the files still name blue)"
        out = run(hook_green, 0, step)
        expect(out.count("switched") == 3, "fleet", f"{step}: the hook switches all three:\n{out}")
        actives(["green"] * 3, step)
        run(test_green, 0, f"{step}, helm test")

        for r in fleet.replicas:
            r.write_upstreams("green")
        live.eventually("the ConfigMap's green reached every replica, no override left",
                        lambda: all(st["file_active"] == "green" and not st["override"]
                                    for st in (r.status() for r in fleet.replicas)))

        step = "an emergency switch of replica 1 to blue, then an upgrade that leaves active=green"
        code, text = live.admin_post(f"{fleet.replicas[0].admin_url}/switch", {"to": "blue"}, fleet.token)
        expect(code == 200, "fleet", f"the emergency switch: {code} {text}")
        out = run(hook_green, 0, step)
        expect(out.count("skipped") == 3, "fleet", f"{step}: the hook leaves all three alone:\n{out}")
        actives(["blue", "green", "green"], f"{step}: the override stays")
        out = run(test_green, 1, f"{step}, helm test")
        expect("expected green: NO" in out, "fleet", f"{step}: helm test says why:\n{out}")

        step = "helm rollback to active=blue (the files name green)"
        run(hook_blue, 0, step)
        actives(["blue"] * 3, step)
        run(test_blue, 0, f"{step}, helm test")


def check_metric_names_live(switchyard: Path, rendered: dict[tuple[str, str], Rendered]) -> None:
    """Every metric the PrometheusRule and the dashboard use is a family a
    running switchyard exports (scraped after a request and a switch)."""
    rules = [r for rs in rendered.values() for r in rs.all("PrometheusRule")]
    expect(bool(rules), "prometheusrule", "no case renders the PrometheusRule")
    used: set[str] = set()
    for rule in rules:
        used |= rule_metrics(rule)
    for rs in rendered.values():
        for cm in rs.all("ConfigMap"):
            if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
                (text,) = cm["data"].values()
                used |= set(re.findall(r"\bswitchyard_[a-z_]+", text))
    with live.Fleet(switchyard, "metrics.check.", 0) as fleet:
        r = fleet.replicas[0]
        for _ in range(3):
            code, _body = live.http_get(f"{r.http}/")
            expect(code == 200, "metrics", f"a request through the proxy: {code}")
        code, text = live.admin_post(f"{r.admin_url}/switch", {"to": "green"}, fleet.token)
        expect(code == 200, "metrics", f"a switch: {code} {text}")
        families = live.metric_families(r.metrics())
    unknown = sorted(m for m in used
                     if m not in families and re.sub(r"_(bucket|sum|count)$", "", m) not in families)
    expect(not unknown, "metrics", f"used but not in a real /metrics scrape: {unknown}")


# ---------------------------------------------------------------- running


def run_case(case: Case, switchyard: Path) -> Rendered:
    lint(case)
    rendered = render(case)
    deterministic(case, rendered)
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
        files: list[Path | None] = sorted((chart / "ci").glob("*-values.yaml"))
        if chart.name not in DEFAULTS_FAIL:
            files.insert(0, None)
        for f in files:
            values = {} if f is None else load_values(f)
            cases.append(Case(chart, "defaults" if f is None else f.name, values, release_name(chart, values)))
    return cases


def broken_cases() -> list[Case]:
    cases = []
    fixtures = sorted(BROKEN.glob("*.yaml"))
    for chart, fixture in DEFAULTS_FAIL.items():
        if BROKEN / fixture not in fixtures:
            raise SystemExit(f"{chart}: its defaults are not rendered, but no fixture {fixture} proves they fail")
    for f in fixtures:
        header = dict(re.findall(r"^# (chart|expect-stage|expect-message): (.+)$", f.read_text(), re.M))
        missing = {"chart", "expect-stage", "expect-message"} - header.keys()
        if missing:
            raise SystemExit(f"{f}: the header lacks {sorted(missing)}")
        values = load_values(f)
        chart = CHARTS / header["chart"].strip()
        cases.append(Case(chart, f.name, values, release_name(chart, values),
                          header["expect-stage"].strip(), header["expect-message"].strip()))
    return cases


def mutated_chart_case(tmp: Path, values: dict[str, Any]) -> Case:
    """The switchyard chart with `replicas:` misspelt in its Deployment template (and `values`)."""
    chart = tmp / "switchyard"
    shutil.copytree(CHARTS / "switchyard", chart)
    deployment = chart / "templates" / "deployment.yaml"
    text = deployment.read_text()
    mutated = text.replace("  replicas: {{", "  replica: {{", 1)
    if mutated == text:
        raise SystemExit("the mutation found no `replicas:` in the switchyard Deployment template")
    deployment.write_text(mutated)
    return Case(chart, "templates/deployment.yaml with replicas misspelt", values, "switchyard", "validate", "replica")


def random_token_chart_case(tmp: Path) -> Case:
    """The switchyard chart with the old fallback: a random token when none is given."""
    chart = tmp / "switchyard-random-token"
    shutil.copytree(CHARTS / "switchyard", chart)
    secret = chart / "templates" / "secret-admin-token.yaml"
    text = secret.read_text()
    mutated = text.replace("{{- $token := .Values.admin.token }}",
                           "{{- $token := .Values.admin.token | default (randAlphaNum 40) }}", 1)
    if mutated == text:
        raise SystemExit("the mutation found no `$token := .Values.admin.token` in the switchyard Secret template")
    secret.write_text(mutated)
    return Case(chart, "templates/secret-admin-token.yaml with a random token", {}, "switchyard", "determinism",
                "two renders differ: Secret/switchyard-admin-token")


def mutated_copy(tmp: Path, name: str, template: str, old: str, new: str) -> Path:
    """A copy of the switchyard chart with `old` replaced by `new` in one template."""
    chart = tmp / name / "switchyard"
    shutil.copytree(CHARTS / "switchyard", chart)
    path = chart / "templates" / template
    text = path.read_text()
    if old not in text:
        raise SystemExit(f"the mutation found no {old!r} in {template}")
    path.write_text(text.replace(old, new, 1))
    return chart


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switchyard", required=True, type=Path, help="the switchyard binary (for `check --offline`)")
    parser.add_argument("--write-readme", action="store_true",
                        help="rewrite the values table of each chart's README.md from its values.yaml, then check")
    args = parser.parse_args()
    if args.write_readme:
        for chart in sorted(p.parent for p in CHARTS.glob("*/Chart.yaml")):
            (chart / "README.md").write_text(readme_with_table(chart))
            print(f"wrote {(chart / 'README.md').relative_to(ROOT)}")
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

    walkthrough = walkthrough_cases()
    for case in good_cases() + walkthrough:
        label = f"{case.chart.name} [{case.name}]"
        try:
            rendered[(case.chart.name, case.name)] = run_case(case, args.switchyard)
            report(True, label)
        except CheckFailed as e:
            report(False, label, f": {e}")

    # The walk-through's install: a NetworkPolicy by default, none when disabled.
    install = next(c for c in walkthrough if c.chart.name == "switchyard")
    label = "switchyard: NetworkPolicy with the walk-through's values, none with networkPolicy.enabled=false"
    try:
        on = rendered.get(("switchyard", install.name))
        expect(on is not None and len(on.all("NetworkPolicy")) == 1, "networkpolicy",
               "the walk-through's install renders one NetworkPolicy")
        off = Case(install.chart, "networkPolicy.enabled=false",
                   merge(install.values, {"networkPolicy": {"enabled": False}}), install.release, secrets=install.secrets)
        expect(not run_case(off, args.switchyard).all("NetworkPolicy"), "networkpolicy",
               "networkPolicy.enabled=false still renders a NetworkPolicy")
        report(True, label)
    except CheckFailed as e:
        report(False, label, f": {e}")

    # admin.token: two renders give the same Secret, holding that token.
    label = "switchyard: admin.token gives the same Secret on every render"
    try:
        values = merge(install.values, {"admin": {"existingSecret": None, "token": "0123456789abcdef-token"}})
        case = Case(install.chart, "admin.token", values, install.release)
        first, second = render(case), render(case)
        a, b = first.one("Secret", "switchyard-admin-token"), second.one("Secret", "switchyard-admin-token")
        expect(a == b, "determinism", f"two renders give two Secrets: {a} != {b}")
        run_case(case, args.switchyard)
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
            expect(svc["spec"].get("clusterIP") == "None", "cross-chart", f"Service {svc['metadata']['name']} is headless")
            services[colour] = f"{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
        default = rendered.get(("switchyard", install.name))
        expect(default is not None, "cross-chart", "the walk-through's switchyard install did not render")
        assert default is not None
        check_cross_chart(default, services)
        report(True, "switchyard default pools = translation-api Services")
    except CheckFailed as e:
        report(False, "switchyard default pools = translation-api Services", f": {e}")

    # Each chart's README.md has the values table its values.yaml gives.
    for chart in sorted(p.parent for p in CHARTS.glob("*/Chart.yaml")):
        label = f"{chart.name}: README.md values table is current"
        try:
            check_readme(chart)
            report(True, label)
        except CheckFailed as e:
            report(False, label, f": {e}")

    # The rendered fleet command lines, run; the alerts' metric names, scraped.
    for label, check in (
        ("switchyard: the hook Job's and test Pod's rendered command lines, run against three real replicas",
         lambda: check_fleet_live(args.switchyard, install)),
        ("switchyard: every metric of the PrometheusRule and the dashboard is in a real /metrics scrape",
         lambda: check_metric_names_live(args.switchyard, rendered)),
    ):
        try:
            check()
            report(True, label)
        except (CheckFailed, live.LiveFailed) as e:
            report(False, label, f": {e}")

    # The checks can fail: every broken fixture must fail where it says.
    with tempfile.TemporaryDirectory(prefix="switchyard-mutated-") as tmp:
        for case in broken_cases() + [mutated_chart_case(Path(tmp), install.values),
                                     random_token_chart_case(Path(tmp))]:
            label = f"{case.chart.name} [{case.name}] must fail at {case.expect_stage}"
            try:
                run_case(case, args.switchyard)
                report(False, label, ": it passed every check")
            except CheckFailed as e:
                ok = e.stage == case.expect_stage and (case.expect_message or "") in e.message
                report(ok, label, "" if ok else f": failed elsewhere: {e}")

    # The live checks can fail too: a hook that forgets --if-file-differs
    # undoes the emergency switch; an alert on a metric the proxy does not export.
    with tempfile.TemporaryDirectory(prefix="switchyard-mutated-") as tmp:
        chart = mutated_copy(Path(tmp), "no-if-file-differs", "job-switch.yaml", "            - --if-file-differs\n", "")
        label = "switchyard [job-switch.yaml without --if-file-differs] must fail at fleet"
        try:
            check_fleet_live(args.switchyard, Case(chart, install.name, install.values, install.release,
                                                   secrets=install.secrets))
            report(False, label, ": it passed")
        except (CheckFailed, live.LiveFailed) as e:
            ok = isinstance(e, CheckFailed) and e.stage == "fleet"
            report(ok, label, "" if ok else f": failed elsewhere: {e}")
        chart = mutated_copy(Path(tmp), "unknown-metric", "prometheusrule.yaml", "switchyard_pool_ready{",
                             "switchyard_pool_readiness{")
        label = "switchyard [prometheusrule.yaml on switchyard_pool_readiness] must fail at metrics"
        try:
            sm = load_values(CHARTS / "switchyard" / "ci" / "servicemonitor-values.yaml")
            r = render(Case(chart, "servicemonitor-values.yaml", sm, "switchyard"))
            check_metric_names_live(args.switchyard, {("switchyard", "mutated"): r})
            report(False, label, ": it passed")
        except (CheckFailed, live.LiveFailed) as e:
            ok = isinstance(e, CheckFailed) and e.stage == "metrics" and "switchyard_pool_readiness" in e.message
            report(ok, label, "" if ok else f": failed elsewhere: {e}")

    print(f"chart checks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
