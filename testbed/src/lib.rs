//! flowmark's testbed: the emulated offload NIC, VM ports, traffic generators
//! and pcap files.
