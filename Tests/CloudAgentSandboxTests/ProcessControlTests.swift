@testable import CloudAgentSandbox
import CloudAgentTestSupport
import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Detached processes and their process trees", .processes)
struct ProcessControlTests {
    private let environment = ["PATH": "/usr/bin:/bin"]

    private func spawn(_ script: String, in directory: TemporaryDirectory, stdin: String? = nil, log: String = "out.log") throws -> SpawnedProcess {
        try ProcessControl.spawnDetached(
            argv: ["/bin/sh", "-c", script], environment: environment,
            workingDirectory: directory.url, stdin: stdin, logFile: directory.path("logs", log)
        )
    }

    /// Reaps the process if it exited: its exit code as a shell shows it.
    private func exitCode(_ process: SpawnedProcess) -> Int32? {
        ProcessControl.reapIfExited(process.pid).map(ProcessControl.exitCode(fromWaitStatus:))
    }

    /// Live processes of the group, zombies excluded.
    private func members(_ pgid: Int32) -> [ProcStat] {
        (ProcStat.all() ?? []).filter { $0.processGroup == pgid && $0.isRunning }
    }

    @Test("its own session and process group (pgid == pid), output appended to the log, stdin delivered, in the working directory")
    func spawnDetached() async throws {
        let directory = try TemporaryDirectory()
        let log = directory.path("logs", "out.log")
        try FileManager.default.createDirectory(at: log.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("earlier\n".utf8).write(to: log)
        let process = try spawn(
            #"read secret; echo "stdout $secret"; echo "stderr $(pwd)" >&2; exec sleep 120"#,
            in: directory, stdin: "the-secret\n"
        )
        #expect(getpgid(process.pid) == process.pid)
        #expect(getsid(process.pid) == process.pid)
        #expect(process.startTime > 0)
        #expect(try await holdsWithin(seconds: 20) { contents(log).contains("stderr ") })
        #expect(contents(log) == "earlier\nstdout the-secret\nstderr \(directory.url.path)\n")
        #expect(ProcessControl.isAlive(process))
        #expect(await ProcessControl.terminate(process, graceMs: 5_000))
        #expect(!ProcessControl.isAlive(process))
    }

    @Test("the environment is exactly the one given")
    func exactEnvironment() async throws {
        let directory = try TemporaryDirectory()
        let given = ["ONE": "1", "TWO": "two words", "PATH": "/usr/bin:/bin"]
        let process = try ProcessControl.spawnDetached(
            argv: ["env"], environment: given, workingDirectory: directory.url, stdin: nil, logFile: directory.path("env.log")
        )
        #expect(try await holdsWithin(seconds: 20) { exitCode(process) == 0 })
        let lines = contents(directory.path("env.log")).split(separator: "\n").map(String.init)
        #expect(lines.sorted() == ["ONE=1", "PATH=/usr/bin:/bin", "TWO=two words"])
    }

    @Test("no stdin: the runtime reads end of file at once")
    func emptyStdin() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn("cat; echo done", in: directory)
        #expect(try await holdsWithin(seconds: 20) { exitCode(process) == 0 })
        #expect(contents(directory.path("logs", "out.log")) == "done\n")
    }

    @Test("descriptors of the parent are not inherited")
    func noInheritedDescriptors() async throws {
        let directory = try TemporaryDirectory()
        let leaked = open("/dev/null", O_RDONLY)  // deliberately without O_CLOEXEC
        defer { close(leaked) }
        let process = try spawn("ls /proc/self/fd", in: directory)
        #expect(try await holdsWithin(seconds: 20) { exitCode(process) == 0 })
        // 0, 1, 2 and the descriptor ls itself opens to read the directory.
        let descriptors = contents(directory.path("logs", "out.log")).split(separator: "\n").compactMap { Int32($0) }
        #expect(!descriptors.contains(leaked))
        #expect(descriptors.count <= 4)
    }

    @Test("a program that cannot be started throws")
    func spawnFailure() throws {
        let directory = try TemporaryDirectory()
        #expect(throws: SpawnError.self) {
            try ProcessControl.spawnDetached(
                argv: ["/nonexistent/program"], environment: [:], workingDirectory: directory.url, stdin: nil, logFile: directory.path("x.log")
            )
        }
        #expect(throws: SpawnError.self) {
            try ProcessControl.spawnDetached(
                argv: ["/bin/true"], environment: [:], workingDirectory: directory.path("missing"), stdin: nil, logFile: directory.path("x.log")
            )
        }
    }

    @Test("terminate takes down the grandchildren too")
    func terminateGrandchildren() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn("sleep 120 & sleep 120", in: directory)
        #expect(try await holdsWithin(seconds: 20) { members(process.pid).count >= 3 })
        let sleepers = members(process.pid).map(\.pid).filter { $0 != process.pid }
        #expect(await ProcessControl.terminate(process, graceMs: 5_000))
        #expect(members(process.pid).isEmpty)
        for pid in sleepers {
            #expect(!(ProcStat.read(pid)?.isRunning ?? false))
        }
        #expect(!ProcessControl.isAlive(process))
    }

    @Test("an exit is an event: the wait returns when the process exits, false at the deadline, at once for one gone")
    func exitIsAnEvent() async throws {
        let directory = try TemporaryDirectory()
        let short = try spawn("sleep 0.3", in: directory)
        let long = try spawn("sleep 120", in: directory, log: "long.log")
        defer { ProcessControl.killTree(long) }
        let started = ContinuousClock.now
        #expect(await ProcessControl.waitForAnExit(of: [long, short], until: started + .seconds(20)))
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(250) && waited < .seconds(5), "returned after \(waited)")
        #expect(!ProcessControl.isAlive(short))
        #expect(await ProcessControl.waitForAnExit(of: [short], until: ContinuousClock.now + .seconds(20)))
        let deadline = ContinuousClock.now + .milliseconds(300)
        #expect(!(await ProcessControl.waitForAnExit(of: [long], until: deadline)))
        #expect(ContinuousClock.now >= deadline)
        #expect(ProcessControl.isAlive(long))
        _ = exitCode(short)
    }

    @Test("a group that ignores SIGTERM is killed once the grace has passed")
    func sigkillAfterGrace() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn(#"trap "" TERM; echo ready; for i in $(seq 120); do sleep 1; done"#, in: directory)
        #expect(try await holdsWithin(seconds: 20) { contents(directory.path("logs", "out.log")).contains("ready") })
        let started = ContinuousClock.now
        #expect(await ProcessControl.terminate(process, graceMs: 400))
        #expect(ContinuousClock.now - started >= .milliseconds(400))
        #expect(members(process.pid).isEmpty)
        #expect(!ProcessControl.isAlive(process))
    }

    @Test("SIGTERM reaches a handler the process installed, which may finish within the grace")
    func gracefulShutdown() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn(#"trap 'sleep 0.5; echo finished; exit 0' TERM; echo ready; for i in $(seq 1200); do sleep 0.1; done"#, in: directory)
        #expect(try await holdsWithin(seconds: 20) { contents(directory.path("logs", "out.log")).contains("ready") })
        #expect(await ProcessControl.terminate(process, graceMs: 10_000))
        #expect(contents(directory.path("logs", "out.log")).hasSuffix("finished\n"))
    }

    @Test("terminate reaps the launched process however it ends: none is left a zombie of this process")
    func terminateLeavesNoZombie() async throws {
        let directory = try TemporaryDirectory()
        // One that exits on SIGTERM at once, one that takes the SIGKILL after the grace, one
        // already exited (a zombie) when the stop begins.
        let quick = try spawn("echo ready; exec sleep 120", in: directory, log: "quick.log")
        let stubborn = try spawn(#"trap "" TERM; echo ready; for i in $(seq 120); do sleep 1; done"#, in: directory, log: "stubborn.log")
        let exited = try spawn("exit 3", in: directory, log: "exited.log")
        #expect(try await holdsWithin(seconds: 20) { contents(directory.path("logs", "quick.log")).contains("ready") })
        #expect(try await holdsWithin(seconds: 20) { contents(directory.path("logs", "stubborn.log")).contains("ready") })
        #expect(try await holdsWithin(seconds: 20) { ProcStat.read(exited.pid).map { !$0.isRunning } ?? false })
        for process in [quick, stubborn, exited] {
            #expect(await ProcessControl.terminate(process, graceMs: 300) { _ = ProcessControl.reapIfExited(process.pid) })
            // Reaped: no /proc entry is left for the pid (a zombie keeps one until it is reaped).
            #expect(ProcStat.read(process.pid) == nil, "pid \(process.pid) left a zombie")
        }
    }

    @Test("terminate of a process already gone is true at once")
    func terminateGone() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn("exit 0", in: directory)
        #expect(try await holdsWithin(seconds: 20) { ProcessControl.reapIfExited(process.pid) != nil })
        #expect(await ProcessControl.terminate(process, graceMs: 5_000))
    }

    @Test("isAlive: true while it runs, false for a wrong start time, a zombie, and once reaped")
    func isAlive() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn("read line; exit 5", in: directory, stdin: "")
        var impostor = process
        impostor.startTime += 1
        #expect(!ProcessControl.isAlive(impostor))

        // stdin is at end of file, so `read` returns at once and the process exits: a zombie
        // until reaped.
        #expect(try await holdsWithin(seconds: 20) { ProcStat.read(process.pid)?.state == "Z" })
        #expect(!ProcessControl.isAlive(process))
        #expect(exitCode(process) == 5)
        #expect(ProcessControl.reapIfExited(process.pid) == nil)
        #expect(!ProcessControl.isAlive(process))
    }

    @Test("isAlive is true for the running process with its own start time")
    func isAliveRunning() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn("exec sleep 120", in: directory)
        #expect(ProcessControl.isAlive(process))
        #expect(ProcessControl.reapIfExited(process.pid) == nil)
        #expect(ProcessControl.signal(process, SIGKILL))
        #expect(try await holdsWithin(seconds: 20) { exitCode(process) == 128 + SIGKILL })
        #expect(!ProcessControl.isAlive(process))
    }

    @Test("signal reaches only the process with the recorded start time: a reused pid is never signalled")
    func signalChecksTheStartTime() async throws {
        let directory = try TemporaryDirectory()
        let process = try spawn("exec sleep 120", in: directory)
        var impostor = process
        impostor.startTime += 1
        #expect(!ProcessControl.signal(impostor, SIGKILL))
        #expect(ProcessControl.isAlive(process))
        #expect(await ProcessControl.terminate(impostor, graceMs: 0))
        #expect(ProcessControl.isAlive(process), "terminate of a process that is not the recorded one signalled it")
        #expect(await ProcessControl.terminate(process, graceMs: 5_000))
    }

    @Test(
        "the tree of a launch: the launched process and its descendants by parent links, breadth first; a wrong start time is no tree; leftovers of a dead launch are its session's later processes"
    )
    func treeFromASnapshot() {
        func stat(_ pid: Int32, parent: Int32, session: Int32, start: UInt64, state: Character = "S") -> ProcStat {
            ProcStat(pid: pid, state: state, parent: parent, processGroup: pid, session: session, startTime: start)
        }
        let snapshot = [
            stat(1, parent: 0, session: 1, start: 1),
            stat(100, parent: 1, session: 100, start: 500),  // the launch
            stat(101, parent: 100, session: 100, start: 501),
            stat(102, parent: 101, session: 102, start: 502),  // its own session (bwrap --new-session)
            stat(103, parent: 102, session: 102, start: 503),
            stat(104, parent: 102, session: 102, start: 504, state: "Z"),
            stat(200, parent: 1, session: 200, start: 400),  // unrelated
            stat(201, parent: 200, session: 200, start: 401),
        ]
        let tree = ProcessTree.build(root: SpawnedProcess(pid: 100, startTime: 500), from: snapshot)
        #expect(tree.members.map(\.process.pid) == [100, 101, 102, 103])
        #expect(tree.members.map(\.depth) == [0, 1, 2, 3])
        #expect(tree.at(depth: 2) == [SpawnedProcess(pid: 102, startTime: 502)])
        #expect(ProcessTree.build(root: SpawnedProcess(pid: 100, startTime: 499), from: snapshot).isEmpty, "a reused pid is another process")
        #expect(ProcessTree.build(root: SpawnedProcess(pid: 200, startTime: 401), from: snapshot).isEmpty)

        // The launched process died: what is left of its session (reparented to 1), and only
        // what started after it.
        let orphaned = [
            stat(1, parent: 0, session: 1, start: 1),
            stat(301, parent: 1, session: 300, start: 601),
            stat(302, parent: 301, session: 300, start: 602),
            stat(303, parent: 1, session: 300, start: 550),
        ]
        let leftovers = ProcessTree.build(root: SpawnedProcess(pid: 300, startTime: 600), from: orphaned)
        #expect(leftovers.members.map(\.process.pid) == [301, 302])
    }

    @Test("a SpawnedProcess survives a JSON round trip")
    func codable() throws {
        let process = SpawnedProcess(pid: 1234, startTime: 98_765)
        let decoded = try JSONDecoder().decode(SpawnedProcess.self, from: JSONEncoder().encode(process))
        #expect(decoded == process)
    }

    @Test("/proc/<pid>/stat parsing copes with spaces and parentheses in the command name")
    func statParsing() {
        let line = "4242 (odd (name) x) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 777123 1000 10"
        let stat = ProcStat.parse(line, pid: 4242)
        #expect(stat?.state == "S")
        #expect(stat?.processGroup == 4240)
        #expect(stat?.startTime == 777_123)
    }
}

@Suite("Wait statuses")
struct WaitStatusTests {
    @Test("an exit code, or 128 + the signal that killed it")
    func decoding() {
        #expect(ProcessControl.exitCode(fromWaitStatus: 0) == 0)
        #expect(ProcessControl.exitCode(fromWaitStatus: 3 << 8) == 3)
        #expect(ProcessControl.exitCode(fromWaitStatus: SIGKILL) == 137)
        #expect(ProcessControl.exitCode(fromWaitStatus: SIGTERM | 0x80) == 143)  // with a core dump flag
    }
}

@Suite("Executable lookup")
struct ExecutableLookupTests {
    @Test("a program is found on PATH as a shell finds it: the first executable file, directories and plain files skipped; a path is taken as it is")
    func lookup() throws {
        let directory = try TemporaryDirectory("lookup")
        let first = directory.url.appendingPathComponent("first"), second = directory.url.appendingPathComponent("second")
        for folder in [first, second] { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) }
        // In `first`: a directory and a non-executable file of that name; in `second`: the program.
        try FileManager.default.createDirectory(at: first.appendingPathComponent("tool"), withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: first.appendingPathComponent("other").path, contents: Data("x".utf8), attributes: [.posixPermissions: 0o644])
        _ = FileManager.default.createFile(
            atPath: second.appendingPathComponent("tool").path, contents: Data("#!/bin/sh\n".utf8), attributes: [.posixPermissions: 0o755])
        let path = "\(first.path)::\(second.path)"
        #expect(ExecutableLookup.find("tool", path: path) == second.path + "/tool")
        #expect(ExecutableLookup.find("other", path: path) == nil)
        #expect(ExecutableLookup.find("missing", path: path) == nil)
        #expect(ExecutableLookup.find(second.appendingPathComponent("tool").path, path: "") == second.appendingPathComponent("tool").path)
        #expect(ExecutableLookup.find(first.appendingPathComponent("other").path, path: "") == nil)
    }
}
