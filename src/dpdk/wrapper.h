/* The DPDK headers flowmark uses, for bindgen (build.rs). Static-inline
 * functions are exported through bindgen's wrap_static_fns; the helpers
 * below cover macros that are not constants. */
#ifndef FLOWMARK_DPDK_WRAPPER_H
#define FLOWMARK_DPDK_WRAPPER_H

#include <rte_common.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ring.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_eth_ring.h>

/* rte_errno is a per-lcore variable behind a macro. */
static inline int flowmark_rte_errno(void) { return rte_errno; }

/* rte_pktmbuf_mtod is a macro. */
static inline void *flowmark_mbuf_data(struct rte_mbuf *m) {
    return rte_pktmbuf_mtod(m, void *);
}

/* The address of the mbuf's packet data inside its buffer (read-only). */
static inline uint16_t flowmark_mbuf_data_off(const struct rte_mbuf *m) {
    return m->data_off;
}

#endif
