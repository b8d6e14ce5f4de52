import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The processes of one launch that the control plane may signal: the process it started,
/// identified by pid and start time, and every process below it in the kernel's process tree.
///
/// Nothing here comes from what a process says about itself: parent links and start times are
/// the kernel's (`/proc/<pid>/stat`), so a pid or process group that a sandboxed process reports
/// is never a target, and a pid that was reused since is never signalled (each member is checked
/// against its start time when it is signalled, through a pidfd where the kernel has them).
///
/// With bubblewrap the tree is: the outer `bwrap` (depth 0, which the control plane launched),
/// the sandbox's init (depth 1), the sandbox's program — the runtime — (depth 2), and the agent
/// below it. Without a sandbox the runtime itself is at depth 0.
public struct ProcessTree: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public var process: SpawnedProcess
        /// 0 for the launched process, 1 for its children, …
        public var depth: Int
    }

    /// Breadth-first from the launched process; empty when it is gone.
    public let members: [Member]

    /// The live members of `root`'s tree now: empty when `root` is no longer that process.
    ///
    /// When the launched process is gone, what is left of its session is taken instead: the
    /// processes whose session id is `root.pid` and which started after it. The kernel does not
    /// hand out a pid that is still some process's session id, so while the pid is free those
    /// are the launch's own leftovers (an agent whose runtime was killed, say), each a root of
    /// its own (depth 0); once another process has the pid, there is nothing of the launch left.
    public static func of(_ root: SpawnedProcess) -> ProcessTree {
        guard let processes = ProcStat.all() else { return ProcessTree(members: []) }
        return build(root: root, from: processes)
    }

    /// The tree of `root` among `processes` (a snapshot of /proc).
    static func build(root: SpawnedProcess, from processes: [ProcStat]) -> ProcessTree {
        var children: [Int32: [ProcStat]] = [:]
        for process in processes where process.isRunning { children[process.parent, default: []].append(process) }
        var roots: [ProcStat]
        if let stat = processes.first(where: { $0.pid == root.pid }), stat.isRunning {
            // Another process has the pid now: the launch's session is long gone (its id would
            // have kept the pid from being reused).
            guard stat.startTime == root.startTime else { return ProcessTree(members: []) }
            roots = [stat]
        } else {
            roots = processes.filter { $0.session == root.pid && $0.isRunning && $0.startTime >= root.startTime }
            let rootPids = Set(roots.map(\.pid))
            // Only the topmost of them: the others are found as their descendants.
            roots.removeAll { rootPids.contains($0.parent) }
        }
        var members: [Member] = []
        var queue = roots.map { ($0, 0) }[...]
        var seen: Set<Int32> = []
        while let (stat, depth) = queue.popFirst() {
            guard seen.insert(stat.pid).inserted else { continue }
            members.append(Member(process: SpawnedProcess(pid: stat.pid, startTime: stat.startTime), depth: depth))
            for child in children[stat.pid] ?? [] { queue.append((child, depth + 1)) }
        }
        return ProcessTree(members: members)
    }

    public var isEmpty: Bool { members.isEmpty }

    /// The members at `depth`.
    public func at(depth: Int) -> [SpawnedProcess] { members.filter { $0.depth == depth }.map(\.process) }

    public var processes: [SpawnedProcess] { members.map(\.process) }
}

extension ProcessControl {
    /// Sends `signal` to `process` only if it is still that process (same pid and start time):
    /// the pid is pinned with a pidfd first where the kernel has them, so that the check and the
    /// signal concern the same process. False when it is gone or is another process now.
    @discardableResult
    public static func signal(_ process: SpawnedProcess, _ signal: Int32) -> Bool {
        guard process.pid > 1 else { return false }
        if let open = PidFD.open, let send = PidFD.sendSignal {
            let descriptor = open(process.pid, 0)
            if descriptor >= 0 {
                defer { close(descriptor) }
                guard isAlive(process) else { return false }
                return send(descriptor, signal, nil, 0) == 0
            }
            if errno == ESRCH { return false }
        }
        guard isAlive(process) else { return false }
        return kill(process.pid, signal) == 0
    }

    /// Whether any of `processes` still runs as itself.
    public static func anyAlive(_ processes: [SpawnedProcess]) -> Bool {
        processes.contains { isAlive($0) }
    }

    /// Stops one launch: SIGTERM to `graceful` (the processes that shut down cleanly on it), up
    /// to `graceMs` for the whole tree to be gone, then SIGKILL to every member still there, from
    /// the top (the launched process first), and up to 2 s more. Members are looked up again while waiting
    /// (processes started meanwhile are included), and every member seen stays a target until it
    /// is gone, even once the launched process has died and its tree can no longer be walked.
    /// `reap` is called while waiting (to collect our own exited child), and once more at the
    /// end whatever happened: the launched process may exit between a reap and the check that
    /// finds it gone, and an exited child left unreaped is a zombie for as long as this process
    /// lives. True when none remains.
    public static func terminate(
        _ root: SpawnedProcess, graceful: (ProcessTree) -> [SpawnedProcess] = { $0.at(depth: 0) }, graceMs: Int64,
        reap: @Sendable () -> Void = {}
    ) async -> Bool {
        defer { reap() }
        let tree = ProcessTree.of(root)
        guard !tree.isEmpty else { return true }
        var seen = tree.members
        for process in graceful(tree) { signal(process, SIGTERM) }
        if await waitUntilGone(root, seen: &seen, within: .milliseconds(max(0, graceMs)), reap: reap) { return true }
        for member in seen { signal(member.process, SIGKILL) }
        return await waitUntilGone(root, seen: &seen, within: .seconds(2), reap: reap)
    }

    /// SIGKILL to every member of `root`'s tree, from the top (the launched process first: a
    /// runtime must not see its agent die and report it). For tests and tools.
    public static func killTree(_ root: SpawnedProcess) {
        for member in ProcessTree.of(root).members { signal(member.process, SIGKILL) }
    }

    /// Waits until every member seen is gone: each exit is an event (`waitForAnExit`); the tree
    /// is walked again after each, and at least every 250 ms, to include processes started
    /// meanwhile.
    private static func waitUntilGone(
        _ root: SpawnedProcess, seen: inout [ProcessTree.Member], within limit: Duration, reap: @Sendable () -> Void
    ) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: limit)
        while true {
            reap()
            let current = ProcessTree.of(root).members
            for member in current where !seen.contains(where: { $0.process == member.process }) { seen.append(member) }
            seen.removeAll { !isAlive($0.process) }
            if seen.isEmpty { return true }
            if clock.now >= deadline { return false }
            // Not cancelled with the caller: a stop must finish even while the control plane
            // shuts down.
            let waiting = seen.map(\.process)
            let until = min(deadline, clock.now.advanced(by: .milliseconds(250)))
            _ = await Task.detached { await waitForAnExit(of: waiting, until: until) }.value
        }
    }
}

/// `pidfd_open` and `pidfd_send_signal` (glibc 2.36+), looked up at run time.
enum PidFD {
    typealias Open = @convention(c) (pid_t, UInt32) -> Int32
    typealias SendSignal = @convention(c) (Int32, Int32, UnsafeMutableRawPointer?, UInt32) -> Int32

    static var open: Open? { symbol("pidfd_open") }
    static var sendSignal: SendSignal? { symbol("pidfd_send_signal") }

    private static func symbol<T>(_ name: String) -> T? {
        guard let address = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { return nil }
        return unsafeBitCast(address, to: T.self)
    }
}
