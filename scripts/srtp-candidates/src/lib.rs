//! Nothing: the candidates are in benches/, examples/ and tests/.
