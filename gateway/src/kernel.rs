//! The kernel side of the exception path (VPP linux-cp's pattern): the exception TAP gets
//! this node's underlay address and MAC, network TAPs join their bridges, and underlay
//! neighbours are taken from the kernel's ARP table — the kernel resolves them through the
//! exception path, and the data plane only reads the result.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;

use swarmgate_dataplane::wire::EthernetAddress;

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run ip: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Turns off checksum and segmentation offloads on `iface` (`ethtool -K`): what it
/// transmits is then segmented and checksummed by the kernel, as a packet socket reading
/// its peer needs.
pub fn offloads_off(iface: &str) -> anyhow::Result<()> {
    let out = Command::new("ethtool")
        .args([
            "-K", iface, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run ethtool (install it): {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ethtool -K {iface} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// True if `name` is a veth whose peer is `peer` (asked with `ip -d`; a peer in another
/// namespace does not count).
pub fn is_veth_to(name: &str, peer: &str) -> bool {
    let Ok(out) = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", name])
        .output()
    else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    let link = &v[0];
    link["linkinfo"]["info_kind"] == "veth" && link["link"].as_str() == Some(peer)
}

/// No IPv6 on `iface` (a bridge port has no address to run it for).
pub fn no_ipv6(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    if std::path::Path::new(&path).exists() {
        std::fs::write(&path, "1").map_err(|e| anyhow::anyhow!("cannot set {path}: {e}"))?;
    }
    Ok(())
}

/// True if a network interface `name` exists in this network namespace. Asked through
/// netlink (`ip`), not `/sys/class/net`: a process that entered a namespace with
/// `nsenter --net` still sees the `/sys` of the one it came from.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Keeps the kernel's own stack off an interface DPDK's `net_af_packet` drives, as if the
/// NIC were bound to vfio-pci: packet sockets still see every frame, but the kernel neither
/// answers ARP on it (NOARP), nor accepts IPv4 arriving on it (strict reverse-path filter:
/// our address and routes live on the exception TAP), nor runs IPv6 on it. Without this the
/// kernel's weak-host model would answer a second time for the address it holds on the TAP.
pub fn isolate_from_kernel(iface: &str) -> anyhow::Result<()> {
    ip(&["link", "set", "dev", iface, "arp", "off"])?;
    for (key, val) in [
        (format!("net/ipv4/conf/{iface}/rp_filter"), "1"),
        (format!("net/ipv6/conf/{iface}/disable_ipv6"), "1"),
    ] {
        let path = std::path::Path::new("/proc/sys").join(&key);
        if path.exists() {
            std::fs::write(&path, val).map_err(|e| anyhow::anyhow!("cannot set {key}: {e}"))?;
        }
    }
    ip(&["link", "set", "dev", iface, "up"])?;
    Ok(())
}

/// The `iface=` argument of a devargs string.
pub fn devargs_iface(devargs: &str) -> Option<&str> {
    devargs.split(',').find_map(|kv| kv.strip_prefix("iface="))
}

/// Gives the exception TAP our MAC, address and MTU, and brings it up.
pub fn setup_exception(
    iface: &str,
    mac: EthernetAddress,
    addr: Ipv4Addr,
    prefix: u8,
    mtu: u16,
) -> anyhow::Result<()> {
    ip(&["link", "set", "dev", iface, "address", &mac.to_string()])?;
    ip(&["link", "set", "dev", iface, "mtu", &mtu.to_string()])?;
    ip(&["addr", "replace", &format!("{addr}/{prefix}"), "dev", iface])?;
    ip(&["link", "set", "dev", iface, "up"])?;
    Ok(())
}

/// Puts a network's TAP into its bridge (creating the bridge if needed).
pub fn attach_to_bridge(tap: &str, bridge: &str, mtu: u16) -> anyhow::Result<()> {
    if !link_exists(bridge) {
        ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    ip(&["link", "set", "dev", bridge, "up"])?;
    ip(&["link", "set", "dev", tap, "mtu", &mtu.to_string()])?;
    ip(&["link", "set", "dev", tap, "master", bridge])?;
    ip(&["link", "set", "dev", tap, "up"])?;
    Ok(())
}

/// Complete ARP entries the kernel holds on `iface`, from `/proc/net/arp`.
pub fn arp_table(iface: &str) -> Vec<(Ipv4Addr, EthernetAddress)> {
    let Ok(text) = std::fs::read_to_string("/proc/net/arp") else {
        return Vec::new();
    };
    parse_arp(&text, iface)
}

fn parse_arp(text: &str, iface: &str) -> Vec<(Ipv4Addr, EthernetAddress)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[5] != iface {
                return None;
            }
            let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 {
                return None; // not complete
            }
            Some((f[0].parse().ok()?, f[3].parse().ok()?))
        })
        .collect()
}

/// Makes the kernel resolve `peer` by sending it one empty UDP datagram to the discard port:
/// the kernel's ARP request leaves through the exception path like any of its traffic.
pub fn trigger_resolution(peer: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
        let _ = s.send_to(&[], (peer, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_arp() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    192.168.77.1     0x1         0x2         02:00:c0:a8:4d:01     *        sg-exc\n\
                    192.168.77.3     0x1         0x0         00:00:00:00:00:00     *        sg-exc\n\
                    10.1.1.1         0x1         0x2         02:00:00:00:00:09     *        eth0\n";
        let t = parse_arp(text, "sg-exc");
        assert_eq!(
            t,
            vec![(
                Ipv4Addr::new(192, 168, 77, 1),
                "02:00:c0:a8:4d:01".parse().unwrap()
            )]
        );
    }
}
