import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif

@Suite("The control plane dies mid-execution and comes back")
struct ControlPlaneCrashTests {
    @Test("kill -9 of the control plane mid-execution, down longer than the stale threshold: the execution completes, every agent event exactly once, ids without gaps")
    func killNineAndRestart() async throws {
        let directory = try TemporaryDirectory()
        let port = try freeLoopbackPort()
        let environment = [
            "CLOUD_AGENT_PORT": String(port), "CLOUD_AGENT_DATA_DIR": directory.url.appendingPathComponent("data").path,
            "CLOUD_AGENT_API_TOKEN": "crash-test-token", "CLOUD_AGENT_SANDBOX": "none",
            "CLOUD_AGENT_HEARTBEAT_INTERVAL": "150ms", "CLOUD_AGENT_STALE_THRESHOLD": "3s", "CLOUD_AGENT_IDLE_TIMEOUT": "60s",
            "CLOUD_AGENT_STOP_GRACE": "1s",
        ]
        let first = try SpawnedCommand(["serve"], environment: environment, in: directory.url)
        defer { first.forceStop() }
        let server = try await RunningServer.awaitBanner(first)
        let client = HTTPClient(baseURL: server.baseURL)
        let token = "crash-test-token"

        let created = try await client.request("POST", "/v1/sessions", token: token, json: ["prompt": "tick 100 0.05\nsay finished"])
        try #require(created.status == 201, "\(created.text)")
        let id = try #require(created["sessionId"]?.stringValue)
        let started = try await client.request("POST", "/v1/sessions/\(id)/initiate", token: token)
        try #require(started.status == 202, "\(started.text)")
        try await eventually(within: 20, "the agent's first ticks") {
            let events = try await client.request("GET", "/v1/sessions/\(id)/events", token: token)
            return (events["events"]?.arrayValue?.count ?? 0) > 5
        }
        first.signal(SIGKILL)
        try await first.waitForExit(within: 5)
        // Down for longer than the stale threshold: downtime must not count against the runtime,
        // whose agent keeps ticking meanwhile (and whose reconnect backoff grows to its 2 s cap).
        try await Task.sleep(for: .milliseconds(3500))

        let second = try SpawnedCommand(["serve"], environment: environment, in: directory.url)
        defer { second.forceStop() }
        _ = try await RunningServer.awaitBanner(second)
        try await eventually(within: 30, "the execution to complete after the restart") {
            let session = try await client.request("GET", "/v1/sessions/\(id)", token: token)
            return session["latestExecution"]?["status"] == "completed" || session["latestExecution"]?["status"] == "failed"
        }
        let session = try await client.request("GET", "/v1/sessions/\(id)", token: token)
        #expect(session["latestExecution"]?["status"] == "completed", "\(session.text)")
        #expect(session["runtime"]?["state"] == "running")

        let events = try await client.request("GET", "/v1/sessions/\(id)/events?limit=1000", token: token)
        let list = events["events"]?.arrayValue ?? []
        let ids = list.compactMap { $0["id"]?.intValue }
        #expect(ids == Array(1...Int64(ids.count)), "ids with gaps: \(ids)")
        let texts = list.filter { $0["type"] == "agent" }.compactMap { $0["data"]?["text"]?.stringValue }
        #expect(texts == (1...100).map { "tick \($0)/100" } + ["finished"], "agent events not exactly once: \(texts)")
        #expect(list.filter { $0["type"] == "execution.failed" }.isEmpty)

        #expect(try await client.request("DELETE", "/v1/sessions/\(id)", token: token).status == 204)
        second.signal(SIGTERM)
        try await second.waitForExit(within: 15)
    }
}
