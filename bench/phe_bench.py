#!/usr/bin/env python3
"""python-paillier (phe) at the same key size, on the same values as `fedmesh bench paillier`.

    bench/.venv-phe/bin/python bench/phe_bench.py [--key-bits 2048] [--params 100000]
        [--count 200] [--seed 1] [--values-out FILE] [--json]

Draws --params update values (uniform in [-0.6, 0.6) from --seed), writes them as little-endian
float32 to --values-out (for `fedmesh bench paillier --values FILE`), generates a phe key pair
(timed), encrypts the first --count values one per ciphertext (phe's only mode: EncryptedNumber
of a float, fresh obfuscation r^n each time), and prints encryptions/s, bytes per value and the
extrapolated time for the whole update. Uses gmpy2 when installed (phe picks it up itself).
"""
import argparse
import json
import random
import struct
import sys
import time

from phe import paillier
import phe.util


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--values-out")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    values = [rng.uniform(-0.6, 0.6) for _ in range(a.params)]
    if a.values_out:
        with open(a.values_out, "wb") as f:
            f.write(struct.pack(f"<{len(values)}f", *values))

    t = time.perf_counter()
    pk, sk = paillier.generate_paillier_keypair(n_length=a.key_bits)
    keygen = time.perf_counter() - t

    sample = values[: a.count]
    t, c = time.perf_counter(), time.process_time()
    cts = [pk.encrypt(v) for v in sample]
    enc, enc_cpu = time.perf_counter() - t, time.process_time() - c
    per_s = len(sample) / enc

    # Correctness of what was timed: the sum decrypts to the plain sum.
    total = sum(cts[1:], cts[0])
    assert abs(sk.decrypt(total) - sum(sample)) < 1e-6

    ct_bytes = (pk.nsquare.bit_length() + 7) // 8
    out = {
        "bench": "phe",
        "phe_version": __import__("phe").__version__,
        "gmpy2": bool(getattr(phe.util, "HAVE_GMP", False)),
        "key_bits": a.key_bits,
        "keygen_s": keygen,
        "encryptions_timed": len(sample),
        "values_per_s": per_s,
        "cpu_encrypt_s": enc_cpu / len(sample),
        "bytes_per_value": ct_bytes,
        "update_s_extrapolated": a.params / per_s,
        "params": a.params,
    }
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:<24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
