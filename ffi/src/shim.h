/* DPDK's hot-path API is `static inline`: these wrappers give Rust a symbol to call.
 * Each is a one-line forward; the inline bodies still inline into them here.
 * Also: a few helpers that build DPDK structs whose layout bindgen should not have to
 * model (rte_eth_conf), and rte_errno (a per-lcore variable). */
#ifndef SWARMGATE_SHIM_H
#define SWARMGATE_SHIM_H

#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_dev.h>

int sg_errno(void);
unsigned sg_lcore_id(void);

uint16_t sg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t sg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *sg_pktmbuf_alloc(struct rte_mempool *mp);
struct rte_mempool *sg_pktmbuf_pool_create_packed(const char *name, unsigned n, unsigned cache,
                                                  uint16_t data_room, int socket);
void sg_pktmbuf_free(struct rte_mbuf *m);
uint8_t *sg_mbuf_data(struct rte_mbuf *m);
uint16_t sg_mbuf_data_len(const struct rte_mbuf *m);
uint16_t sg_mbuf_headroom(const struct rte_mbuf *m);
uint16_t sg_mbuf_tailroom(const struct rte_mbuf *m);
uint16_t sg_mbuf_nb_segs(const struct rte_mbuf *m);
char *sg_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *sg_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
char *sg_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int sg_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void sg_mbuf_reset_offloads(struct rte_mbuf *m);

unsigned sg_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n);
unsigned sg_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned sg_ring_count(const struct rte_ring *r);

/* Configures `port` with the given queue counts, RSS over IP/UDP/TCP when the PMD offers
 * it and more than one receive queue is asked for. Returns 0 or a negative errno. */
int sg_port_configure(uint16_t port, uint16_t nb_rxq, uint16_t nb_txq, uint16_t nb_desc,
                      struct rte_mempool *mp, int *rss_enabled);
int sg_port_max_queues(uint16_t port, uint16_t *max_rxq, uint16_t *max_txq);
int sg_port_mac(uint16_t port, uint8_t out[6]);
int sg_port_link_up(uint16_t port);

struct sg_port_stats {
    uint64_t ipackets, opackets, ibytes, obytes, imissed, ierrors, oerrors, rx_nombuf;
};
int sg_port_stats(uint16_t port, struct sg_port_stats *out);

#endif
