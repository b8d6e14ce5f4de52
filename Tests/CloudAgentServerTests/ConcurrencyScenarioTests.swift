import CloudAgentTestSupport
import CloudAgentCore
import CloudAgentEngine
import CloudAgentServer
import Foundation
import HTTPTypes
import HummingbirdTesting
import Synchronization
import Testing

/// The defined concurrency with real runtimes, through the HTTP API (`InterleavingTests` runs
/// each case deterministically on the in-memory store).
@Suite("Defined concurrency with real runtimes", .processes)
struct ConcurrencyScenarioTests {
    static let timing = Timing(idleTimeoutMs: 60_000, heartbeatIntervalMs: 150, staleThresholdMs: 3000, pendingTimeoutMs: 10_000, stopGraceMs: 1500)

    /// The sessions whose runtime has a process now (the launched process, under bubblewrap the
    /// sandbox around it): its command line names the runtime, and it works in the workspace.
    static func sessionsWithRuntimes(under data: URL) -> Set<String> {
        let root = data.appendingPathComponent("workspaces").resolvingSymlinksInPath().path + "/"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return Set(
            entries.compactMap { entry -> String? in
                guard Int32(entry) != nil, let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/cwd"),
                    cwd.hasPrefix(root), let cmdline = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(entry)/cmdline")),
                    String(decoding: cmdline, as: UTF8.self).contains("cloud-agent-runtime")
                else { return nil }
                return cwd.dropFirst(root.count).split(separator: "/").first.map(String.init)
            })
    }

    @Test("two concurrent messages: one 202, one 409 naming the accepted execution")
    func concurrentMessages() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "say first"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await api.waitForExecution(id, status: "completed")
            async let one = api.separately(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say one"])
            async let two = api.separately(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say two"])
            let answers = try await [one, two]
            #expect(answers.map(\.status).sorted() == [202, 409])
            let accepted = try #require(answers.first { $0.status == 202 })
            let refused = try #require(answers.first { $0.status == 409 })
            #expect(refused["error"]?["code"] == "EXECUTION_IN_PROGRESS")
            #expect(refused["error"]?["activeExecutionId"] == accepted["executionId"])
            try await api.waitForExecution(id, status: "completed")
            #expect(try await api.request(.get, "/v1/sessions/\(id)/executions")["executions"]?.arrayValue?.count == 2)
        }
    }

    @Test("PATCH racing initiate: an initiate during a restarting PATCH is a 409, and a PATCH after initiate is a 409")
    func patchRacingInitiate() async throws {
        try await TestServer(timing: Self.timing).run { api in
            let id = try await api.createSession(["prompt": "say hi"])
            try await api.waitForRuntime(id, state: "running")
            // The PATCH's new setup command takes 2 s: the session is being changed meanwhile.
            let patching = Task { try await api.separately(.patch, "/v1/sessions/\(id)", json: ["setupCommands": ["sleep 2"]]) }
            try await eventually(within: 10, "the PATCH to stop the runtime") {
                try await api.request(.get, "/v1/sessions/\(id)")["runtime"]?["state"] == "stopped"
            }
            let refused = try await api.request(.post, "/v1/sessions/\(id)/initiate")
            #expect(refused.status == 409, "\(refused.text)")
            #expect(refused["error"]?["code"] == "INVALID_STATE")
            let patched = try await patching.value
            #expect(patched.status == 200, "\(patched.text)")
            #expect(patched["setupCommands"] == ["sleep 2"])
            try await api.waitForRuntime(id, state: "running", within: 15)
            // The other order: initiate first, then the PATCH is refused and changes nothing.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            let late = try await api.request(.patch, "/v1/sessions/\(id)", json: ["envVars": ["A": "1"]])
            #expect(late.status == 409 && late["error"]?["code"] == "INVALID_STATE", "\(late.text)")
            try await api.waitForExecution(id, status: "completed")
            #expect(try await api.request(.get, "/v1/sessions/\(id)")["envVarNames"] == [])
        }
    }

    /// Alone: it measures that the API answers within 1 s while a stop takes its whole grace.
    @Test("capacity counts a stopping runtime: a new session is admitted at once, and launches only once the old one's processes are gone", .alone)
    func capacityCountsAStoppingRuntime() async throws {
        // A grace long enough that A's processes are surely still there when B is admitted, even
        // on a loaded machine (the case is not tried otherwise).
        var timing = Self.timing
        timing.stopGraceMs = 6000
        var server = try TestServer(timing: timing)
        server.maxRuntimes = 1
        try await server.run { api in
            let data = api.plane.configuration.dataDirectory
            // A's agent ignores SIGTERM: its runtime takes the whole stop grace to go.
            let a = try await api.createSession(["prompt": "run trap '' TERM; sleep 30"])
            #expect(try await api.request(.post, "/v1/sessions/\(a)/initiate").status == 202)
            // The launch is recorded in the background: its process first, then the agent under it.
            try await eventually(within: 10, "A's runtime launch to be recorded") { try await api.plane.store.session(a)?.runtime.process != nil }
            try await eventually(within: 10, "A's agent to run") { try await !api.agentProcesses(a).isEmpty }
            // Watch which sessions have runtime processes, for as long as the test runs.
            let most = Mutex(0)
            let watching = Task {
                while !Task.isCancelled {
                    let count = Self.sessionsWithRuntimes(under: data).count
                    most.withLock { $0 = max($0, count) }
                    try? await Task.sleep(for: .milliseconds(10))
                }
            }
            defer { watching.cancel() }
            let deleting = Task { try await api.separately(.delete, "/v1/sessions/\(a)") }
            try await eventually(within: 5, "A to be deleted") { try await api.request(.get, "/v1/sessions/\(a)").status == 404 }
            // B is admitted while A's processes are still there: the API does not wait for them.
            let start = ContinuousClock.now
            let b = try await api.createSession(["prompt": "say b"])
            #expect(ContinuousClock.now - start < .seconds(1))
            #expect(Self.sessionsWithRuntimes(under: data).contains(a.rawValue), "A's processes were already gone: the case was not tried")
            #expect(try await api.plane.store.session(b)?.runtime.process == nil)
            #expect(try await deleting.value.status == 204)
            try await api.waitForRuntime(b, state: "running", within: 15)
            #expect(try await api.request(.post, "/v1/sessions/\(b)/initiate").status == 202)
            try await api.waitForExecution(b, status: "completed")
            watching.cancel()
            _ = await watching.result
            #expect(most.withLock { $0 } == 1, "two sessions had runtimes at once with one runtime slot")
        }
    }
}

extension TestAPI {
    /// A request on a connection of its own: the test client sends its requests one at a time
    /// on one connection, so requests meant to run at once go this way.
    func separately(_ method: HTTPRequest.Method, _ path: String, json: JSONValue? = nil) async throws -> APIResponse {
        let port = try #require(client.port)
        let url = try #require(URL(string: "http://127.0.0.1:\(port)"))
        return try await HTTPClient(baseURL: url).request(method.rawValue, path, token: TestServer.localToken, json: json)
    }
}
