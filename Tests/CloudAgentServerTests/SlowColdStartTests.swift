import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// One session's slow cold start (its restore runs a long setup command) holds up nothing: not
/// another session's timers or API calls, nor its own interrupt, PATCH, GET and DELETE.
@Suite("A slow cold start holds up nothing", .alone)
struct SlowColdStartTests {
    static let timing = Timing(idleTimeoutMs: 1000, heartbeatIntervalMs: 150, staleThresholdMs: 1500, pendingTimeoutMs: 3000, stopGraceMs: 1000)
    /// Fast when the session is prepared, `seconds` long on every later run (a cold start's
    /// restore): the HOME survives the runtime's stop.
    static func slowOnRestore(_ seconds: Int) -> JSONValue {
        .string("if [ -f \"$HOME/.prepared\" ]; then sleep \(seconds); fi; touch \"$HOME/.prepared\"")
    }

    /// The time `body` took, in seconds.
    static func timed<T>(_ body: () async throws -> T) async rethrows -> (T, Double) {
        let start = ContinuousClock.now
        let value = try await body()
        let elapsed = ContinuousClock.now - start
        return (value, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// A session whose runtime ran once and stopped for idleness; its next message cold-starts.
    static func stoppedSession(_ api: TestAPI, setup: JSONValue) async throws -> SessionID {
        let id = try await api.createSession(["prompt": "say first", "setupCommands": [setup]])
        #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
        try await api.waitForExecution(id, status: "completed")
        try await api.waitForRuntime(id, state: "stopped", within: 10)
        return id
    }

    @Test(
        "while A restores with a 6 s setup command: B's idle stop lands within 1 s of its deadline; A's GET, PATCH and interrupt and B's DELETE each answer within 1 s; the pending timeout (3 s) does not fail A"
    )
    func nothingWaitsForASlowColdStart() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let a = try await Self.stoppedSession(api, setup: Self.slowOnRestore(6))
            let b = try await api.createSession(["prompt": "say b", "idleTimeoutMs": 2500])
            #expect(try await api.request(.post, "/v1/sessions/\(b)/initiate").status == 202)
            try await api.waitForExecution(b, status: "completed")

            // A's cold start begins: its restore sleeps 6 s in a setup command.
            let sent = try await api.request(.post, "/v1/sessions/\(a)/messages", json: ["prompt": "say after the cold start"])
            #expect(sent.status == 202)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await api.request(.get, "/v1/sessions/\(a)")["runtime"]?["state"] == "starting")

            let (view, getTime) = try await Self.timed { try await api.request(.get, "/v1/sessions/\(a)") }
            #expect(view.status == 200 && getTime < 1, "GET took \(getTime) s")
            let (patched, patchTime) = try await Self.timed { try await api.request(.patch, "/v1/sessions/\(a)", json: ["idleTimeoutMs": 5000]) }
            #expect(patched.status == 200 && patchTime < 1, "PATCH took \(patchTime) s: \(patched.text)")

            // B stops for idleness on time although A's cold start is under way.
            let stopped = try await api.waitForRuntime(b, state: "stopped", within: 10)
            let reason = try #require(stopped["runtime"]?["stopReason"])
            #expect(reason["rule"] == "idle")
            let at = try #require(reason["at"]?.stringValue.flatMap(Timestamp.parse))
            let lastActivity = try #require(reason["lastActivityAt"]?.stringValue.flatMap(Timestamp.parse))
            let lag = at.timeIntervalSince(lastActivity.addingTimeInterval(2.5))
            #expect(lag >= 0 && lag < 1, "B's idle stop landed \(lag) s after its deadline")
            #expect(try await api.request(.get, "/v1/sessions/\(a)")["runtime"]?["state"] == "starting", "A's restore is still running")

            let (interrupted, interruptTime) = try await Self.timed { try await api.request(.post, "/v1/sessions/\(a)/interrupt") }
            #expect(interrupted["interrupted"] == true && interruptTime < 1, "interrupt took \(interruptTime) s: \(interrupted.text)")
            let (deleted, deleteTime) = try await Self.timed { try await api.request(.delete, "/v1/sessions/\(b)") }
            #expect(deleted.status == 204 && deleteTime < 1, "DELETE took \(deleteTime) s")

            // A's cold start ends with a running runtime, though its restore took longer than
            // the pending timeout: that counts from the launch.
            let running = try await api.waitForRuntime(a, state: "running", within: 15)
            #expect(running["idleTimeoutMs"] == 5000)
            #expect(try await api.events(a).filter { $0.type == "runtime.started" }.count == 2)
            #expect(try await api.request(.post, "/v1/sessions/\(a)/messages", json: ["prompt": "say again"]).status == 202)
            try await api.waitForExecution(a, status: "completed")
        }
    }

    @Test("DELETE during a cold start's restore answers at once and leaves no process and no workspace")
    func deleteDuringAColdStart() async throws {
        let server = try TestServer(timing: Self.timing)
        try await server.run { api in
            let id = try await Self.stoppedSession(api, setup: Self.slowOnRestore(3))
            let workspace = api.plane.configuration.dataDirectory.appendingPathComponent("workspaces/\(id.rawValue)")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say never"]).status == 202)
            try await Task.sleep(for: .milliseconds(300))
            let (deleted, deleteTime) = try await Self.timed { try await api.request(.delete, "/v1/sessions/\(id)") }
            #expect(deleted.status == 204 && deleteTime < 1, "DELETE took \(deleteTime) s")
            #expect(try await api.request(.get, "/v1/sessions/\(id)").status == 404)
            // Once the restore is over, its files are removed again and nothing was launched.
            try await eventually(within: 15, "the restored workspace to be removed") {
                !FileManager.default.fileExists(atPath: workspace.path) && Reliability.processes(under: workspace).isEmpty
            }
            try await Task.sleep(for: .milliseconds(500))
            #expect(!FileManager.default.fileExists(atPath: workspace.path))
            #expect(Reliability.processes(under: server.directory.url).isEmpty, "a process was left: \(Reliability.processes(under: server.directory.url))")
        }
    }
}
