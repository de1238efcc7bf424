"""Command line: ``python -m immutools.replica list [--fullsize]`` and ``... build SPEC... --out DIR [--forms ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from immutools.replica.spec import SpecError, list_specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m immutools.replica",
                                     description="Build replica disk images from published-layout specs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the buildable specs")
    p_list.add_argument("--dir", type=Path, help="spec directory (default: the packaged data/replica-specs)")
    p_list.add_argument("--json", action="store_true")
    p_list.add_argument("--fullsize", action="store_true", help="the full-size variants (data/replica-specs/fullsize)")
    p_build = sub.add_parser("build", help="build replicas")
    p_build.add_argument("specs", nargs="+", metavar="SPEC", help="spec name or path to a YAML file; 'all' for every spec")
    p_build.add_argument("--out", type=Path, required=True, help="output directory")
    p_build.add_argument("--forms", help="comma-separated: raw,bz2,xz,zst,lz4,gz,qcow2 (default: the spec's forms)")
    p_build.add_argument("--no-sha256", action="store_true", help="skip hashing the raw image (faster)")
    p_bundle = sub.add_parser("bundle", help="build the bundled default images listed in data/replicas/bundle.yaml")
    p_bundle.add_argument("--out", type=Path, help="output directory (default: data/replicas)")
    args = parser.parse_args(argv)

    from immutools.replica.builder import BuildError, build

    try:
        if args.command == "list":
            from immutools.replica.builder import base_context

            specs = list_specs(args.dir, fullsize=args.fullsize)
            if args.json:
                print(json.dumps([{"name": s.name, "distribution": s.get("distribution"), "release": base_context(s)["release"],
                                   "size": s.size, "description": s.get("description")} for s in specs], indent=2))
            else:
                for s in specs:
                    print(f"{s.name:38} {s.get('distribution', ''):8} {base_context(s)['release']:20} "
                          f"{s.size / 2**20:6.0f} MiB")
            return 0
        if args.command == "bundle":
            return bundle(args.out)
        names = args.specs
        if names == ["all"]:
            names = [str(s.path) for s in list_specs()]
        forms = args.forms.split(",") if args.forms else None
        for name in names:
            manifest = build(name, args.out, forms, compute_sha256=not args.no_sha256)
            t = manifest["timings"]
            print(f"{manifest['spec']}: {args.out / manifest['image']}  {manifest['disk']['size']} bytes, "
                  f"{manifest['allocated_bytes'] / 2**20:.1f} MiB allocated, sha256 {manifest.get('sha256', '-')}, "
                  f"built in {t['total']:.1f} s", flush=True)
            for form, fname in manifest["forms"].items():
                if form != "raw":
                    print(f"    {form}: {args.out / fname} ({t.get('form ' + form, 0):.1f} s)")
        return 0
    except (SpecError, BuildError) as exc:
        print(f"immutools.replica: {exc}", file=sys.stderr)
        return 2


def spec_digest(name: str) -> str:
    """A digest of the merged spec content: what a bundled image was built from."""
    import hashlib

    from immutools.replica.spec import load_spec

    return hashlib.sha256(json.dumps(load_spec(name).data, sort_keys=True, default=str).encode()).hexdigest()


def bundle(out: Path | None = None) -> int:
    """Build each bundled image in its shipped form and keep only that file and its manifest."""
    import shutil
    import tempfile

    import yaml

    from immutools.paths import data_dir
    from immutools.replica.builder import build

    out = out or data_dir() / "replicas"
    listing = yaml.safe_load((data_dir() / "replicas" / "bundle.yaml").read_text())
    for item in listing["images"]:
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            manifest = build(item["spec"], Path(tmp), ["raw", item["form"]], compute_sha256=True)
            shipped = Path(tmp) / manifest["forms"][item["form"]]
            target = out / shipped.name
            shutil.move(str(shipped), target)
            manifest["bundle"] = {"spec_digest": spec_digest(item["spec"]), "form": item["form"]}
            (out / (shipped.name + ".manifest.json")).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            print(f"{item['spec']}: {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
