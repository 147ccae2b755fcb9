//! Integration tests of fedmesh-crypto: one binary, one module per area.

mod paillier;
mod secagg;
