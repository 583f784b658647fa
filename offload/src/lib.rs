//! flowmark's offload engine: the rte_flow model, megaflow → rte_flow
//! translation, the mark pool and the offload worker.
