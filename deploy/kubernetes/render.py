#!/usr/bin/env python3
"""Render a kustomization of deploy/kubernetes without kustomize or kubectl.

    python3 deploy/kubernetes/render.py deploy/kubernetes/overlays/ha > tessera.yaml

`kubectl apply -k DIR` renders the same objects; this renderer exists so the
tests (and a machine without kubectl) can render the overlays offline. It
implements the subset of kustomize the manifests use, and refuses anything
else instead of guessing at it:

- `resources`: YAML files (one or more documents) and directories holding a
  `kustomization.yaml`, rendered first, in order;
- `namespace`: set on every namespaced object of this level and below;
- `configMapGenerator` (`files`, `literals`, `behavior` `create` or
  `replace`), with `generatorOptions.disableNameSuffixHash: true` required:
  the manifests keep fixed names so that mounted ConfigMaps update in place;
- `patches`: JSON 6902 operation lists (`add`, `replace`, `remove`), inline
  (`patch`) or from a file (`path`), applied to the objects that match
  `target.kind` and `target.name`; a strategic merge patch is refused;
- `images`: `name` with `newName`, `newTag` or `digest`, on the containers
  and init containers of every pod template.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "configMapGenerator",
    "generatorOptions",
    "patches",
    "images",
}
GENERATOR_KEYS = {"name", "files", "literals", "behavior"}
PATCH_KEYS = {"path", "patch", "target"}
TARGET_KEYS = {"kind", "name"}
IMAGE_KEYS = {"name", "newName", "newTag", "digest"}

# Kinds that have no namespace (the ones these manifests could use).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "CSIDriver",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}


class RenderError(Exception):
    """A kustomization this renderer cannot render faithfully."""


def _load_documents(path: Path) -> list[Obj]:
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as e:
        raise RenderError(f"{path}: not YAML: {e}") from e
    objects = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: a document without apiVersion and kind")
        objects.append(doc)
    return objects


def _check_keys(where: str, given: Any, allowed: set[str]) -> None:
    if not isinstance(given, dict):
        raise RenderError(f"{where}: expected a mapping")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise RenderError(f"{where}: unsupported field(s) {', '.join(unknown)}")


def _inside(base: Path, name: str, where: str) -> Path:
    """`name` relative to `base`, refused if it leaves `base` (kustomize's
    load restrictor: a file must sit in the kustomization's directory tree)."""
    path = (base / name).resolve()
    if not path.is_relative_to(base.resolve()):
        raise RenderError(f"{where}: `{name}` is outside {base}")
    return path


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer `{path}` must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise RenderError(f"patch path `{path}`: no `{part}`")
            doc = doc[part]
        elif isinstance(doc, list):
            if not part.isdigit() or int(part) >= len(doc):
                raise RenderError(f"patch path `{path}`: no index `{part}`")
            doc = doc[int(part)]
        else:
            raise RenderError(f"patch path `{path}`: `{part}` is inside a scalar")
    return doc


def apply_json6902(obj: Obj, ops: Any) -> Obj:
    """`obj` with the RFC 6902 operations `ops` applied (a copy)."""
    if not isinstance(ops, list):
        raise RenderError("only JSON 6902 patches (a list of operations) are supported")
    out = copy.deepcopy(obj)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise RenderError(f"malformed patch operation {op!r}")
        kind, path = op.get("op"), op["path"]
        parts = _pointer(path)
        if not parts or parts == [""]:
            raise RenderError(f"patch path `{path}` names the whole object")
        parent = _walk(out, parts[:-1], path)
        last = parts[-1]
        if kind in ("add", "replace"):
            if "value" not in op:
                raise RenderError(f"`{kind}` at `{path}` without a value")
            value = copy.deepcopy(op["value"])
            if isinstance(parent, dict):
                if kind == "replace" and last not in parent:
                    raise RenderError(f"patch path `{path}`: nothing to replace")
                parent[last] = value
            elif isinstance(parent, list):
                if kind == "add" and last == "-":
                    parent.append(value)
                elif last.isdigit() and int(last) <= len(parent) - (kind == "replace"):
                    if kind == "add":
                        parent.insert(int(last), value)
                    else:
                        parent[int(last)] = value
                else:
                    raise RenderError(f"patch path `{path}`: no index `{last}`")
            else:
                raise RenderError(f"patch path `{path}`: parent is a scalar")
        elif kind == "remove":
            if isinstance(parent, dict) and last in parent:
                del parent[last]
            elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
                del parent[int(last)]
            else:
                raise RenderError(f"patch path `{path}`: nothing to remove")
        else:
            raise RenderError(f"unsupported patch operation `{kind}`")
    return out


def pod_specs(obj: Obj) -> list[Obj]:
    """The pod specs of a workload object (none for other kinds)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [spec.get("template", {}).get("spec", {})]
    if kind == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    return []


def containers(obj: Obj) -> list[Obj]:
    """Every container and init container of a workload object."""
    found: list[Obj] = []
    for spec in pod_specs(obj):
        found.extend(spec.get("initContainers") or [])
        found.extend(spec.get("containers") or [])
    return found


def _split_image(image: str) -> tuple[str, str]:
    """(name, the rest: `:tag`, `@digest` or ``)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _set_images(objects: list[Obj], images: list[Any], where: str) -> None:
    for entry in images:
        _check_keys(f"{where}: images", entry, IMAGE_KEYS)
        for c in (c for obj in objects for c in containers(obj)):
            name, rest = _split_image(str(c.get("image", "")))
            if name != entry["name"]:
                continue
            new_name = entry.get("newName", name)
            if "digest" in entry:
                rest = "@" + entry["digest"]
            elif "newTag" in entry:
                rest = ":" + str(entry["newTag"])
            c["image"] = new_name + rest


def _generate_config_map(base: Path, gen: Any, namespace: str | None, where: str) -> Obj:
    _check_keys(f"{where}: configMapGenerator", gen, GENERATOR_KEYS)
    data: dict[str, str] = {}
    for name in gen.get("files") or []:
        key, _, file = str(name).rpartition("=") if "=" in str(name) else ("", "", str(name))
        path = _inside(base, file, where)
        data[key or path.name] = path.read_text(encoding="utf-8")
    for literal in gen.get("literals") or []:
        key, sep, value = str(literal).partition("=")
        if not sep:
            raise RenderError(f"{where}: literal `{literal}` is not KEY=VALUE")
        data[key] = value
    cm: Obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
    if namespace:
        cm["metadata"]["namespace"] = namespace
    return cm


def render(directory: Path) -> list[Obj]:
    """The objects the kustomization in `directory` produces."""
    file = directory / "kustomization.yaml"
    if not file.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    where = str(file)
    k = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    _check_keys(where, k, KUSTOMIZATION_KEYS)
    if k.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{where}: kind must be Kustomization")

    objects: list[Obj] = []
    for resource in k.get("resources") or []:
        # A directory (another kustomization) may be anywhere, as a base
        # is; a file must be in this kustomization's tree.
        path = (directory / str(resource)).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(_load_documents(_inside(directory, str(resource), where)))
        else:
            raise RenderError(f"{where}: resource `{resource}` not found")

    namespace = k.get("namespace")
    generators = k.get("configMapGenerator") or []
    if generators:
        options = k.get("generatorOptions") or {}
        _check_keys(f"{where}: generatorOptions", options, {"disableNameSuffixHash"})
        if options.get("disableNameSuffixHash") is not True:
            raise RenderError(
                f"{where}: name suffix hashes are not rendered; set generatorOptions.disableNameSuffixHash: true"
            )
    for gen in generators:
        cm = _generate_config_map(directory, gen, namespace, where)
        behavior = gen.get("behavior", "create")
        same = [
            i
            for i, o in enumerate(objects)
            if o["kind"] == "ConfigMap"
            and o["metadata"]["name"] == cm["metadata"]["name"]
            and o["metadata"].get("namespace") == (namespace or o["metadata"].get("namespace"))
        ]
        if behavior == "create":
            if same:
                raise RenderError(f"{where}: ConfigMap `{gen['name']}` already exists (use behavior: replace)")
            objects.append(cm)
        elif behavior == "replace":
            if not same:
                raise RenderError(f"{where}: ConfigMap `{gen['name']}` to replace does not exist")
            objects[same[0]] = cm
        else:
            raise RenderError(f"{where}: unsupported generator behavior `{behavior}`")

    for patch in k.get("patches") or []:
        _check_keys(f"{where}: patches", patch, PATCH_KEYS)
        target = patch.get("target")
        _check_keys(f"{where}: patch target", target, TARGET_KEYS)
        if ("path" in patch) == ("patch" in patch):
            raise RenderError(f"{where}: a patch needs exactly one of path and patch")
        text = (
            _inside(directory, str(patch["path"]), where).read_text(encoding="utf-8")
            if "path" in patch
            else str(patch["patch"])
        )
        ops = yaml.safe_load(text)
        matched = False
        for i, obj in enumerate(objects):
            if all(
                (obj["kind"] if key == "kind" else obj["metadata"]["name"]) == value for key, value in target.items()
            ):
                objects[i] = apply_json6902(obj, ops)
                matched = True
        if not matched:
            raise RenderError(f"{where}: patch target {target} matches nothing")

    _set_images(objects, k.get("images") or [], where)

    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objects


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} KUSTOMIZATION_DIR", file=sys.stderr)
        return 2
    try:
        objects = render(Path(argv[1]))
    except (RenderError, OSError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
