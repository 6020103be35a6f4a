"""Answer-quality evaluation: fidelity of the sequence-parallel methods against full attention with
real weights, measured on the approximated context rows (`fidelity` with its `fidelity_*` parts,
`control_scorers`, `smollm2`), and harnesses for the long-video benchmarks VNBench and
LongVideoBench with an injected model (`videobench`)."""
