//! Integration tests of fedmesh-crypto: one binary, one module per area.

mod secagg;
mod paillier;
