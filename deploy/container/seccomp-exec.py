#!/usr/bin/env python3
"""Runs a command under a Docker-format seccomp profile, the way a container runtime applies
it (libseccomp, no_new_privs, the default action for everything not allowed), without a
container runtime: `seccomp-exec.py PROFILE.json [--drop NAME]... -- COMMAND ARGS...`.
Used by scripts/tests/65-deploy.sh to check that tether runs under deploy/container's profile
and fails to start, saying why, when io_uring is refused (--drop io_uring_setup ...)."""
import ctypes, json, os, sys

SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(errno):
    return 0x00050000 | (errno & 0xFFFF)


def main():
    argv = sys.argv[1:]
    if "--" not in argv or not argv:
        sys.exit("usage: seccomp-exec.py PROFILE.json [--drop NAME]... -- COMMAND ARGS...")
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1:]
    profile_path, drop = opts[0], set()
    rest = opts[1:]
    while rest:
        if rest[0] != "--drop" or len(rest) < 2:
            sys.exit(f"unexpected argument {rest[0]!r}")
        drop.add(rest[1])
        rest = rest[2:]
    profile = json.load(open(profile_path))
    if profile["defaultAction"] != "SCMP_ACT_ERRNO":
        sys.exit("only allow-list profiles (defaultAction SCMP_ACT_ERRNO) are supported")
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(scmp_act_errno(profile.get("defaultErrnoRet", 1)))
    if not ctx:
        sys.exit("seccomp_init failed")
    unknown = []
    for group in profile["syscalls"]:
        if group["action"] != "SCMP_ACT_ALLOW" or group.get("args"):
            sys.exit("only unconditional SCMP_ACT_ALLOW groups are supported")
        for name in group["names"]:
            if name in drop:
                continue
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                unknown.append(name)
                continue
            rc = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0)
            if rc != 0:
                sys.exit(f"seccomp_rule_add({name}) failed: {rc}")
    if unknown:
        sys.exit(f"system calls unknown on this architecture: {unknown}")
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        sys.exit(f"seccomp_load failed: {rc}")
    os.execv(command[0], command)


main()
