"""Load time of an SAE folder with its checksums verified against without (`load_sae(...,
verify=False)`, the CLI's --no-verify), at 16k and 1M features, and what recording them adds to
`save`.

Each size is saved once into a temp folder (`--tmp`), read once to warm the page cache, then
loaded verified and unverified in interleaved rounds, best of `--repeats`: the ratio is the
hashing's cost on top of a load from memory (a load from a cold disk reads the same bytes either
way, so its ratio is closer to 1). 1M features use d_in `--large-d-in` (default 128: 2 x 1M x 128
fp32 = 1 GiB of weights; saving holds the weights and their serialised copy, so peak memory is
about twice that: 576 needs ~10 GB).

    python benchmarks/sae_verify.py [--repeats 5] [--large-d-in 128] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from monoscope.runtime import configure_threads
from monoscope.sae import SAEConfig, load_sae
from monoscope.sae.build import empty_sae
from monoscope.sae.checksums import tensor_digests


def make_sae(n_features: int, d_in: int):
    """A topk SAE with random weights (their values do not matter to hashing)."""
    sae = empty_sae(SAEConfig(arch="topk", d_in=d_in, n_features=n_features, k=32))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return sae


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n_features: int, d_in: int, repeats: int, root: Path) -> dict:
    folder = root / f"sae-{n_features}"
    sae = make_sae(n_features, d_in)
    start = time.perf_counter()
    sae.save(folder)
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    for w in sae.state_dict().values():  # what save spent hashing
        tensor_digests(w)
    hash_s = time.perf_counter() - start
    del sae
    size = (folder / "weights.safetensors").stat().st_size
    (folder / "weights.safetensors").read_bytes()  # warm the page cache
    plain, checked = [], []
    for _ in range(repeats):  # interleaved: drift on a shared machine hits both alike
        plain.append(best(lambda: load_sae(folder, verify=False), 1))
        checked.append(best(lambda: load_sae(folder, verify=True), 1))
    shutil.rmtree(folder)
    return {
        "features": n_features,
        "d_in": d_in,
        "mib": size / 2**20,
        "save_s": save_s,
        "hash_s": hash_s,
        "plain_s": min(plain),
        "checked_s": min(checked),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--large-d-in", type=int, default=128, help="d_in of the 1M SAE")
    parser.add_argument("--tmp", default=None, help="folder for the SAEs (default: system temp)")
    args = parser.parse_args()
    configure_threads()
    print(f"threads {torch.get_num_threads()}; best of {args.repeats}, warm page cache")
    header = (
        f"{'features':>9} {'d_in':>5} {'MiB':>8} {'load s':>8} {'verified s':>10} {'ratio':>6} "
        f"{'hash GB/s':>9} {'save s':>7} {'of it hashing':>13}"
    )
    print(header)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n, d in ((16_384, 576), (1 << 20, args.large_d_in)):
            r = measure(n, d, args.repeats, Path(tmp))
            rate = r["mib"] * 2**20 / max(r["checked_s"] - r["plain_s"], 1e-9) / 1e9
            print(
                f"{r['features']:>9,} {r['d_in']:>5} {r['mib']:>8.1f} {r['plain_s']:>8.3f} "
                f"{r['checked_s']:>10.3f} {r['checked_s'] / r['plain_s']:>6.2f} {rate:>9.2f} "
                f"{r['save_s']:>7.2f} {r['hash_s']:>13.2f}"
            )


if __name__ == "__main__":
    main()
