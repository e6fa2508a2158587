//! A seccomp filter for kernels whose Landlock cannot refuse connecting to a
//! unix socket by its path (before ABI 9): without it, a confined program
//! running as root could connect to Docker's socket and start a privileged
//! container. It refuses creating `AF_UNIX` sockets (socketpair, which names
//! no path, stays allowed) and io_uring, which could create one behind the
//! filter's back. `exec-network: true` lifts it with the TCP restriction.

/// One BPF instruction (struct sock_filter).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// struct sock_fprog, pointing into a [`Filter`].
#[repr(C)]
pub struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x32 system calls on x86_64 have this bit; they are refused.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;
#[cfg(not(target_arch = "x86_64"))]
const X32_BIT: u32 = u32::MAX;

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_EACCES: u32 = 0x0005_0000 | libc::EACCES as u32;

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The filter, built once; [`Filter::prog`] is what the child installs.
pub struct Filter {
    ops: [SockFilter; 12],
}

impl Filter {
    pub fn new() -> Self {
        // Offsets in struct seccomp_data: nr 0, arch 4, args[0] 16 (its low
        // half on little-endian machines).
        Self {
            ops: [
                op(LD_W_ABS, 0, 0, 4),
                op(JEQ_K, 1, 0, AUDIT_ARCH), // -> 3, else 2
                op(RET_K, 0, 0, RET_EACCES), // another architecture's calls
                op(LD_W_ABS, 0, 0, 0),
                op(JGE_K, 5, 0, X32_BIT),                         // -> 10
                op(JEQ_K, 4, 0, libc::SYS_io_uring_setup as u32), // -> 10
                op(JEQ_K, 0, 4, libc::SYS_socket as u32),         // -> 7, else 11
                op(LD_W_ABS, 0, 0, 16),
                op(JEQ_K, 1, 0, libc::AF_UNIX as u32), // -> 10, else 9
                op(RET_K, 0, 0, RET_ALLOW),
                op(RET_K, 0, 0, RET_EACCES),
                op(RET_K, 0, 0, RET_ALLOW),
            ],
        }
    }

    pub fn prog(&self) -> SockFprog {
        SockFprog {
            len: self.ops.len() as u16,
            filter: self.ops.as_ptr(),
        }
    }
}

impl Default for Filter {
    fn default() -> Self {
        Self::new()
    }
}
