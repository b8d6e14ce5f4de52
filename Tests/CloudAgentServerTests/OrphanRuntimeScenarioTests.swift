import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Synchronization
import Testing
#if canImport(Glibc)
    import Glibc
#endif

/// A runtime whose control plane goes away, through the real server and a real runtime process
/// (the API contract, "Runtimes on their own").
@Suite("Runtimes on their own, end to end", .processes)
struct OrphanRuntimeScenarioTests {
    /// Whether `pid` runs (a zombie, waiting for this process to reap it, does not).
    static func isRunning(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }

    @Test(
        "PATCH idleTimeoutMs reaches the connected runtime; the server stops and the runtime ends itself after that idle timeout; a restarted server records the stop as idle"
    )
    func orphanedRuntimeEndsItselfWhenIdle() async throws {
        // The server's idle rule would stop the runtime after 10 minutes; the PATCH says 4 s.
        let timing = Timing(idleTimeoutMs: 600_000, heartbeatIntervalMs: 150, staleThresholdMs: 1200, stopGraceMs: 1000)
        let server = try TestServer(timing: timing)
        let launched = Mutex<(id: SessionID, pid: Int32, completedAt: String)?>(nil)
        try await server.run(keepRuntimes: true) { api in
            let id = try await api.createSession(["prompt": "say hello"])
            try await api.waitForRuntime(id, state: "running")
            let pid = try #require(try await api.plane.store.session(id)?.runtime.process?.pid)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let execution = try await api.waitForExecution(id, status: "completed")
            let completedAt = try #require(execution["completedAt"]?.stringValue)

            let patched = try await api.request(.patch, "/v1/sessions/\(id)", json: ["idleTimeoutMs": 4000])
            #expect(patched.status == 200, "\(patched.text)")
            let log = server.directory.url.appendingPathComponent("data/runtimes/\(id).log")
            try await eventually(within: 10, "the runtime to take the new idle timeout") {
                let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
                return text.split(separator: "\n").contains { $0.contains("settings changed") && $0.contains("idleTimeoutMs=4000") }
            }
            launched.withLock { $0 = (id, pid, completedAt) }
        }
        // The control plane has stopped (its runtimes outlive it by design): on its own, the
        // runtime stops itself once idle for 4 s, counted from its execution's end.
        let (id, pid, completedAt) = try #require(launched.withLock { $0 })
        defer { if Self.isRunning(pid) { kill(-pid, SIGKILL) } }
        try await eventually(within: 15, "the runtime to end itself") { !Self.isRunning(pid) }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid { #expect(status == 0, "runtime exit status \(status)") }
        let log = try String(contentsOf: server.directory.url.appendingPathComponent("data/runtimes/\(id).log"), encoding: .utf8)
        let line = try #require(log.split(separator: "\n").first { $0.contains("the runtime stops itself") }, "\(log.suffix(4000))")
        #expect(line.contains("rule=idle") && line.contains("idleTimeoutMs=4000"), "\(line)")
        #expect(!log.contains("the control plane asks the runtime to shut down"), "the control plane stopped it: \(log.suffix(4000))")

        // The next control plane finds it gone past its idle deadline: an idle stop, not a crash.
        try await TestServer(directory: server.directory, timing: timing).run { api in
            let stopped = try await api.waitForRuntime(id, state: "stopped", within: 10)
            let reason = stopped["runtime"]?["stopReason"]
            #expect(reason?["rule"] == "idle", "\(reason ?? .null)")
            #expect(reason?["idleTimeoutMs"] == 4000)
            #expect(reason?["lastActivityAt"]?.stringValue == completedAt)
            #expect(stopped["latestExecution"]?["status"] == "completed")
        }
    }
}
