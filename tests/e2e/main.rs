//! End-to-end tests: real `fedmesh` processes talking libp2p over TCP on 127.0.0.1, training on
//! the shipped MNIST data, each with its own sled audit log.

mod admission;
mod cli;
mod dp;
mod faults;
mod groups;
mod harness;
mod hostile;
mod network;
