//! EAL initialisation, thread registration and pinning, device hot-plug.

use std::ffi::CString;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{check, errno_error, DpdkError};
use crate::sys;

static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Set when a mempool was dropped while some of its mbufs were still out, so it was not
/// freed: the EAL's memory must then stay mapped until the process ends.
pub(crate) static POOL_LEAKED: AtomicBool = AtomicBool::new(false);

/// Keeps the EAL up: held by the [`Eal`] handle and by every mempool, port, queue and
/// ring made from it, so `rte_eal_cleanup` runs only after the last of them is gone.
#[derive(Debug)]
pub(crate) struct EalGuard {
    _private: (),
}

impl Drop for EalGuard {
    fn drop(&mut self) {
        if POOL_LEAKED.load(Ordering::SeqCst) {
            return; // mbufs may still point into EAL memory
        }
        // SAFETY: the last user of DPDK in this process is gone; cleanup once.
        unsafe { sys::rte_eal_cleanup() };
    }
}

/// The initialised EAL: at most one per process. Everything that needs DPDK up —
/// mempools, ports, rings, hot-plug — takes `&Eal`, so using DPDK before `init` does not
/// compile, and keeps the EAL alive: `rte_eal_cleanup` runs when the handle and every
/// object made from it are gone, never under them. DPDK cannot be initialised again in
/// the same process.
#[derive(Debug)]
pub struct Eal {
    guard: Arc<EalGuard>,
}

impl Eal {
    /// Initialises the EAL with `args` (as on a DPDK command line, program name first is not
    /// needed: one is supplied). Fails if called twice.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal, DpdkError> {
        if INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let mut owned = vec![CString::new("swarmgate").expect("no NUL")];
        for a in args {
            owned.push(CString::new(a.as_ref()).map_err(|_| {
                DpdkError::InvalidArgument(format!("EAL argument with NUL: {:?}", a.as_ref()))
            })?);
        }
        // EAL keeps pointers into argv (it may permute it and keeps some strings), so the
        // argument strings live for the rest of the process.
        let argv: &'static mut [*mut c_char] =
            Vec::leak(owned.into_iter().map(CString::into_raw).collect::<Vec<_>>());
        // SAFETY: argv holds `argv.len()` valid NUL-terminated strings that are never freed;
        // rte_eal_init runs once per process (guarded by INITIALISED).
        let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if rc < 0 {
            INITIALISED.store(false, Ordering::SeqCst);
            return Err(errno_error("rte_eal_init"));
        }
        Ok(Eal {
            guard: Arc::new(EalGuard { _private: () }),
        })
    }
}

impl Eal {
    pub(crate) fn guard(&self) -> Arc<EalGuard> {
        self.guard.clone()
    }
}

/// Registers the calling (non-EAL) thread with DPDK so it gets an lcore id — and with it
/// per-lcore mempool caches. Returns the lcore id.
pub fn register_thread() -> Result<u32, DpdkError> {
    // SAFETY: registers the calling thread; valid after EAL init (callers hold an `Eal`).
    let rc = unsafe { sys::rte_thread_register() };
    if rc < 0 {
        return Err(errno_error("rte_thread_register"));
    }
    // SAFETY: reads the calling thread's lcore id.
    Ok(unsafe { sys::sg_lcore_id() })
}

/// Pins the calling thread to CPU `core`.
pub fn pin_current_thread(core: usize) -> Result<(), DpdkError> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(DpdkError::InvalidArgument(format!(
            "CPU {core} out of range"
        )));
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it; the set is valid
    // for the call's duration; pid 0 means the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(DpdkError::Call {
            what: "sched_setaffinity",
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            msg: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// Run-time hot-plug of devices, so ports can be added while running.
pub mod hotplug {
    use super::*;

    /// Probes a device from a devargs string, e.g. `net_tap3,iface=sg-4099`
    /// (`rte_dev_probe`). The new port is then found with
    /// [`Port::by_name`](crate::Port::by_name).
    pub fn probe(_eal: &Eal, devargs: &str) -> Result<(), DpdkError> {
        let c =
            CString::new(devargs).map_err(|_| DpdkError::InvalidArgument(devargs.to_owned()))?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        check(unsafe { sys::rte_dev_probe(c.as_ptr()) }, "rte_dev_probe").map(|_| ())
    }

    /// Removes a probed device by its devargs name (`rte_dev_remove` is by device; DPDK's
    /// `rte_eal_hotplug_remove` wants bus and name: virtual devices live on `vdev`).
    /// Refused while a [`Port`](crate::Port) for it, or any of its queues, is alive:
    /// detaching a device under a queue would leave the queue polling freed memory, and
    /// DPDK may give the port id to the next device.
    pub fn remove(_eal: &Eal, name: &str) -> Result<(), DpdkError> {
        if crate::port::is_open(name) {
            return Err(DpdkError::InvalidArgument(format!(
                "device {name} still has an open port or queues"
            )));
        }
        let bus = CString::new("vdev").expect("no NUL");
        let c = CString::new(name).map_err(|_| DpdkError::InvalidArgument(name.to_owned()))?;
        // SAFETY: both strings are valid NUL-terminated for the call's duration; no port
        // value refers to the device (checked above).
        check(
            unsafe { sys::rte_eal_hotplug_remove(bus.as_ptr(), c.as_ptr()) },
            "rte_eal_hotplug_remove",
        )
        .map(|_| ())
    }
}
