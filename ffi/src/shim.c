#include <rte_mbuf_pool_ops.h>
#include "shim.h"

int sg_errno(void) { return rte_errno; }
unsigned sg_lcore_id(void) { return rte_lcore_id(); }

uint16_t sg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}
uint16_t sg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *sg_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

/* rte_pktmbuf_pool_create_by_ops (lib/mbuf/rte_mbuf.c), with the pool's objects packed back
 * to back: RTE_MEMPOOL_F_NO_IOVA_CONTIG (no object kept inside one page) and
 * RTE_MEMPOOL_F_NO_SPREAD (no padding across memory channels). */
struct rte_mempool *sg_pktmbuf_pool_create_packed(const char *name, unsigned n, unsigned cache,
                                                  uint16_t data_room, int socket)
{
    struct rte_pktmbuf_pool_private priv = { .mbuf_data_room_size = data_room,
                                             .mbuf_priv_size = 0 };
    struct rte_mempool *mp = rte_mempool_create_empty(
        name, n, sizeof(struct rte_mbuf) + data_room, cache, sizeof(priv), socket,
        RTE_MEMPOOL_F_NO_IOVA_CONTIG | RTE_MEMPOOL_F_NO_SPREAD);
    if (mp == NULL)
        return NULL;
    int ret = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL);
    if (ret == 0) {
        rte_pktmbuf_pool_init(mp, &priv);
        ret = rte_mempool_populate_default(mp);
    }
    if (ret < 0) {
        rte_mempool_free(mp);
        rte_errno = -ret;
        return NULL;
    }
    rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
    return mp;
}
void sg_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
uint8_t *sg_mbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t sg_mbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint16_t sg_mbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t sg_mbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint16_t sg_mbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
char *sg_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }
char *sg_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }
char *sg_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
int sg_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
void sg_mbuf_reset_offloads(struct rte_mbuf *m) { m->ol_flags = 0; m->packet_type = 0; }

unsigned sg_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n) {
    return rte_ring_enqueue_burst(r, objs, n, NULL);
}
unsigned sg_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n) {
    return rte_ring_dequeue_burst(r, objs, n, NULL);
}
unsigned sg_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }

int sg_port_max_queues(uint16_t port, uint16_t *max_rxq, uint16_t *max_txq) {
    struct rte_eth_dev_info info;
    int rc = rte_eth_dev_info_get(port, &info);
    if (rc != 0) return rc;
    *max_rxq = info.max_rx_queues;
    *max_txq = info.max_tx_queues;
    return 0;
}

int sg_port_configure(uint16_t port, uint16_t nb_rxq, uint16_t nb_txq, uint16_t nb_desc,
                      struct rte_mempool *mp, int *rss_enabled) {
    struct rte_eth_dev_info info;
    struct rte_eth_conf conf;
    int rc = rte_eth_dev_info_get(port, &info);
    if (rc != 0) return rc;
    memset(&conf, 0, sizeof(conf));
    *rss_enabled = 0;
    uint64_t hf = (RTE_ETH_RSS_IP | RTE_ETH_RSS_UDP | RTE_ETH_RSS_TCP) & info.flow_type_rss_offloads;
    if (nb_rxq > 1 && hf != 0) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = hf;
        *rss_enabled = 1;
    }
    rc = rte_eth_dev_configure(port, nb_rxq, nb_txq, &conf);
    if (rc != 0) return rc;
    uint16_t rxd = nb_desc, txd = nb_desc;
    rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
    if (rc != 0) return rc;
    int socket = rte_eth_dev_socket_id(port);
    if (socket < 0) socket = 0;
    for (uint16_t q = 0; q < nb_rxq; q++) {
        rc = rte_eth_rx_queue_setup(port, q, rxd, socket, NULL, mp);
        if (rc != 0) return rc;
    }
    for (uint16_t q = 0; q < nb_txq; q++) {
        rc = rte_eth_tx_queue_setup(port, q, txd, socket, NULL);
        if (rc != 0) return rc;
    }
    return 0;
}

int sg_port_mac(uint16_t port, uint8_t out[6]) {
    struct rte_ether_addr a;
    int rc = rte_eth_macaddr_get(port, &a);
    if (rc != 0) return rc;
    memcpy(out, a.addr_bytes, 6);
    return 0;
}

int sg_port_link_up(uint16_t port) {
    struct rte_eth_link link;
    memset(&link, 0, sizeof(link));
    if (rte_eth_link_get_nowait(port, &link) != 0) return 0;
    return link.link_status == RTE_ETH_LINK_UP;
}

int sg_port_stats(uint16_t port, struct sg_port_stats *out) {
    struct rte_eth_stats s;
    int rc = rte_eth_stats_get(port, &s);
    if (rc != 0) return rc;
    out->ipackets = s.ipackets; out->opackets = s.opackets;
    out->ibytes = s.ibytes; out->obytes = s.obytes;
    out->imissed = s.imissed; out->ierrors = s.ierrors; out->oerrors = s.oerrors;
    out->rx_nombuf = s.rx_nombuf;
    return 0;
}
