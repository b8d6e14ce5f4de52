import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentSandbox
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The real server with runtimes in bubblewrap: what a hostile agent can reach from inside.
@Suite("The sandbox, end to end", .enabled("bubblewrap is missing or cannot create namespaces on this machine") { await bwrapWorks() }, .processes)
struct SandboxScenarioTests {
    static let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 1500, stopGraceMs: 1000)

    static func server() throws -> TestServer {
        var server = try TestServer(timing: timing)
        server.sandbox = .bwrap
        return server
    }

    /// The tool events' outputs of the session, in order.
    static func toolOutputs(_ api: TestAPI, _ id: SessionID) async throws -> [String] {
        try await api.events(id).filter { $0.type == "agent" && $0.data["kind"] == "tool" }.map { $0.data["output"]?.stringValue ?? "" }
    }

    @Test(
        "the agent runs as uid 1000 in its workspace and sees neither a file of the control plane's user, nor the data directory, nor another session; the view says sandbox bwrap"
    )
    func agentSeesOnlyItsOwn() async throws {
        let server = try Self.server()
        let hostHome = FileManager.default.homeDirectoryForCurrentUser
        let secret = hostHome.appendingPathComponent(".cloud-agent-scenario-\(UUID().uuidString)")
        try Data("HOST-SECRET".utf8).write(to: secret)
        defer { try? FileManager.default.removeItem(at: secret) }
        try await server.run { api in
            let other = try await api.createSession(["prompt": "write private.txt OTHER-PRIVATE"])
            #expect(try await api.request(.post, "/v1/sessions/\(other)/initiate").status == 202)
            try await api.waitForExecution(other, status: "completed")
            let data = server.directory.url.appendingPathComponent("data").path
            let id = try await api.createSession([
                "prompt": .string(
                    [
                        "run id -u",
                        "run cat \(secret.path) 2>&1; true",
                        "run ls -A \(data) 2>&1",
                        "run cat \(data)/workspaces/\(other)/private.txt 2>&1; true",
                        "run cat \(data)/secret.key \(data)/api-token 2>&1; true",
                    ].joined(separator: "\n"))
            ])
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["sandbox"] == "bwrap")
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            let outputs = try await Self.toolOutputs(api, id)
            try #require(outputs.count == 5, "\(outputs)")
            #expect(outputs[0].trimmingCharacters(in: .whitespacesAndNewlines) == "1000")
            #expect(outputs[1].contains("No such file") && !outputs[1].contains("HOST-SECRET"))
            #expect(!outputs[2].contains("secret.key") && !outputs[2].contains("api-token") && !outputs[2].contains(".sqlite"), "\(outputs[2])")
            #expect(outputs[3].contains("No such file") && !outputs[3].contains("OTHER-PRIVATE"))
            #expect(outputs[4].contains("No such file"))
        }
    }

    @Test(
        "an agent that kills every process it can (its own runtime included) reaches nothing outside: the runtime is crashed, its execution failed, no process of it is left, the host's processes live on"
    )
    func agentKillsItsOwnRuntime() async throws {
        let server = try Self.server()
        let sentinel = try ProcessControl.spawnDetached(
            argv: ["/bin/sleep", "120"], environment: ["PATH": ExecutableLookup.defaultPath],
            workingDirectory: server.directory.url, stdin: nil, logFile: server.directory.url.appendingPathComponent("sentinel.log")
        )
        defer { ProcessControl.signal(sentinel, SIGKILL); _ = ProcessControl.reapIfExited(sentinel.pid) }
        try await server.run { api in
            let id = try await api.createSession(["prompt": .string("run kill -9 -1; kill -9 \(sentinel.pid) \(getpid()) 1; sleep 5")])
            try await api.waitForRuntime(id, state: "running")
            let launched = try await api.runtimeProcess(id)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let failed = try await api.waitForExecution(id, status: "failed", within: 15)
            #expect(failed["error"]?.stringValue?.isEmpty == false)
            let session = try await api.waitForRuntime(id, state: "stopped")
            #expect(session["runtime"]?["stopReason"]?["rule"] == "crashed")
            #expect(ProcessTree.of(launched).isEmpty, "processes of the killed runtime are left")
            #expect(ProcessControl.isAlive(sentinel), "a host process was killed from inside the sandbox")
            // The session carries on: the next message cold-starts a new runtime.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say again"]).status == 202)
            try await api.waitForExecution(id, status: "completed")
        }
    }

    @Test("interrupt, then DELETE: the agent is stopped inside the sandbox and nothing of the launch is left")
    func interruptAndDelete() async throws {
        try await Self.server().run { api in
            let id = try await api.createSession(["prompt": "run sleep 60 & sleep 60"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "running")
            try await eventually(within: 10, "the agent's processes") { try await !api.agentProcesses(id).isEmpty }
            let agent = try await api.agentProcesses(id)
            #expect(try await api.request(.post, "/v1/sessions/\(id)/interrupt")["interrupted"] == true)
            try await api.waitForExecution(id, status: "interrupted", within: 10)
            try await eventually(within: 10, "the agent to be gone") { !ProcessControl.anyAlive(agent) }
            let launched = try await api.runtimeProcess(id)
            #expect(try await api.request(.delete, "/v1/sessions/\(id)").status == 204)
            #expect(ProcessTree.of(launched).isEmpty)
        }
    }
}
