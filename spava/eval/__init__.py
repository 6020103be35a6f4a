"""Answer-quality evaluation: passkey retrieval and next-token fidelity of the sequence-parallel
methods against full attention with real weights (`fidelity`, `smollm2`), and harnesses for the
long-video benchmarks VNBench and LongVideoBench with an injected model (`videobench`)."""
