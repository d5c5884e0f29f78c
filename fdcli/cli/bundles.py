"""``fd inspect``, ``fd verify``, ``fd keygen`` and ``fd merge``: looking at bundles, signing
them, and joining the parts of a multi-process emit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from . import options as opts
from . import app
from .options import JsonOpt, LimitOpt, Overwrite, TrustedOpt
from ..console import human, out, plain, print_json, report, reporting_errors
from ..errors import BundleError


@app.command(short_help="Describe a bundle from its manifest, or one shard.")
def inspect(
    path: Annotated[Path, typer.Argument(help="A bundle folder, or one shard file "
                                              "(shard-NNNNN.safetensors.zst).")],
    limit: LimitOpt = None, json_out: JsonOpt = False,
) -> None:
    """Describe a logit bundle, or a single shard, without trusting more than it must.

    For a bundle this reads only the manifest: task, encoding, label space, producer, sizes
    and fidelity. Use [bold]fd verify[/bold] to check every shard.

    [bold]Example[/bold]: fd inspect clients/hospital-a/bundle --json
    """
    from ..bundle.inspect import describe

    with reporting_errors():
        info = describe(path, opts.limits(limit))
    if json_out:
        print_json(info)
        return
    table = Table(title=plain(f"{info['kind']}: {path}"), show_header=False,
                  title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info["summary"].items():
        table.add_row(plain(str(key)), human(value) if key.endswith("bytes") and isinstance(
            value, (int, float)) else plain(str(value)))
    out.print(table)
    out.print(plain(f"checked: {info['checked']}"), style="dim")


@app.command(short_help="Check a bundle, or a signed model folder.")
def verify(
    bundle_dir: Annotated[Path, typer.Argument(help="The bundle folder, or a signed model "
                                                    "folder, to check.")],
    trusted_keys: TrustedOpt = None, limit: LimitOpt = None, json_out: JsonOpt = False,
) -> None:
    """Check everything in a bundle: the manifest, its signature if it has one, every
    shard's size and sha256, bounded decompression, tensor shapes and dtypes, and the values
    themselves. With [bold]--trusted-keys[/bold] an unsigned bundle, or one signed by a key
    not in that folder, is refused.

    A model folder (a specialist or student, with fd.json and model.sig): every file against
    its OpenSSF signature.

    Exits 0 on a sound bundle and 1 otherwise, listing every problem found.

    [bold]Example[/bold]: fd verify usb-stick/hospital-a-bundle --trusted-keys keys/
    """
    from ..bundle import verify_bundle
    from ..bundle.manifest import MANIFEST, STANDARD_SIGNATURE

    if not (bundle_dir / MANIFEST).exists() and (bundle_dir / STANDARD_SIGNATURE).exists():
        _verify_model(bundle_dir, trusted_keys, limit, json_out)
        return
    with reporting_errors():
        checked = verify_bundle(bundle_dir, opts.limits(limit), opts.trusted(trusted_keys))
        if not (checked.ok or json_out):
            raise BundleError.collected(str(bundle_dir), checked.problems)
    if json_out:
        print_json({"path": str(bundle_dir), "ok": checked.ok, "problems": checked.problems,
                    "signer": checked.signer, "shards_checked": checked.shards_checked,
                    "rows_checked": checked.rows_checked})
    else:
        m = checked.manifest
        signed = (f"signed by {checked.signer}" + ("" if trusted_keys else
                                                  " (not checked against trusted keys)")
                  if checked.signer else "unsigned")
        out.print(Text("OK ", style="green") + plain(
            f"{bundle_dir}: {checked.shards_checked} shard(s), {checked.rows_checked} rows, "
            f"{m.examples} examples, encoding {m.encoding['name']}, {signed}"), soft_wrap=True)
    if not checked.ok:
        raise typer.Exit(1)


def _verify_model(folder: Path, trusted_keys, limit, json_out: bool) -> None:
    """fd verify on a signed model folder."""
    from ..bundle.signing import check_signature

    with reporting_errors():
        signer = check_signature(folder, None, opts.trusted(trusted_keys), opts.limits(limit))
    if json_out:
        print_json({"path": str(folder), "ok": True, "problems": [], "signer": signer,
                    "kind": "model"})
        return
    out.print(Text("OK ", style="green") + plain(
        f"{folder}: model folder, every file as signed, signed by {signer}"
        + ("" if trusted_keys else " (not checked against trusted keys)")), soft_wrap=True)


@app.command(short_help="Make a key pair for signing bundles and models.")
def keygen(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the key files.")],
    name: Annotated[str, typer.Option(help="Key name: writes NAME.key and NAME.pub.")] = "fd",
    algorithm: Annotated[str, typer.Option(
        help="ecdsa-p256, ecdsa-p384 or ecdsa-p521 (OpenSSF Model Signing), or ed25519 (fd's "
             "older signature.json, read for one more version).")] = "ecdsa-p256",
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Make a key pair for signing bundles and model folders: NAME.key stays with the
    institution (mode 0600); NAME.pub goes to the coordinator's [bold]--trusted-keys[/bold]
    folder. ECDSA keys sign in the OpenSSF Model Signing format (model.sig), which
    [bold]model_signing verify key[/bold] accepts as well (docs/trust.md).

    [bold]Example[/bold]: fd keygen --out keys --name hospital-a; then fd emit-logits ...
    --sign-key keys/hospital-a.key
    """
    from ..bundle.signing import keygen as run

    with reporting_errors():
        result = run(out_dir, name, overwrite=overwrite, algorithm=algorithm)
    report(result, json_out, "key pair")




@app.command(short_help="Join the parts of a multi-process emit into one bundle.")
def merge(
    parts: Annotated[list[Path], typer.Argument(help="The part folders of one emit "
                                                     "(OUT.partRofN).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The merged bundle (must not "
                                                              "exist).")],
    sign_key: opts.SignOpt = None, trusted_keys: TrustedOpt = None, limit: LimitOpt = None,
    overwrite: Overwrite = False, json_out: JsonOpt = False,
) -> None:
    """Join the parts that the processes of one [bold]fd emit-logits[/bold] under torchrun or
    accelerate launch wrote, when they were not on one shared filesystem (docs/scaling.md).

    Every part is verified; they must be the same emit (model, proxy, encoding, settings)
    over disjoint examples. Their shards are copied byte for byte, in example order.

    [bold]Example[/bold]: fd merge node0/bundle.part0of2 node1/bundle.part1of2 --out bundle
    """
    from ..bundle.merge import merge_bundles

    with reporting_errors():
        m = merge_bundles(parts, out_dir, overwrite=overwrite, limits=opts.limits(limit),
                          trusted_keys=opts.trusted(trusted_keys),
                          sign_key=opts.sign_key(sign_key))
    report({"out": str(out_dir), "parts": len(parts), "examples": m.examples, "rows": m.rows,
            "shards": len(m.shards), "bytes": sum(s.bytes for s in m.shards)}, json_out,
           "bundle")
