import CloudAgentCore
import CloudAgentServer
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Testing

/// The per-user quota (`CLOUD_AGENT_MAX_RUNTIMES_PER_USER`) through the real server and real
/// runtimes under the sandbox `auto` picks.
@Suite("Per-user quota: a user's runtimes at once", .processes)
struct QuotaScenarioTests {
    @Test(
        "at the quota a new session evicts the user's least recently active idle runtime; with none idle, 429 QUOTA_EXCEEDED and nothing is made; another user's runtimes are never touched"
    )
    func evictOrRefuse() async throws {
        var server = try TestServer(timing: Timing(heartbeatIntervalMs: 200, staleThresholdMs: 5000, stopGraceMs: 1000))
        server.maxRuntimesPerUser = 2
        try await server.run { api in
            let bobToken = "bob-token-0123456789abcdef"
            try await api.plane.store.saveToken(hash: BearerToken.hash(bobToken), owner: Owner(user: "bob"), createdAt: Date())
            let bobs = try await api.createSession(["prompt": "say bob"], token: bobToken)
            let first = try await api.createSession(["prompt": "say one"])
            _ = try await api.waitForRuntime(first, state: "running", within: 30)
            let second = try await api.createSession(["prompt": "sleep 30"])
            _ = try await api.waitForRuntime(second, state: "running", within: 30)
            try await eventually(within: 30, "bob's runtime to run") {
                try await api.request(.get, "/v1/sessions/\(bobs)", token: bobToken)["runtime"]?["state"] == "running"
            }

            // A third: the least recently active idle runtime of this user (the first) is evicted.
            let third = try await api.createSession(["prompt": "sleep 30"])
            let evicted = try await api.waitForRuntime(first, state: "stopped", within: 30)
            #expect(evicted["runtime"]?["stopReason"]?["rule"] == "evicted")
            #expect(evicted["runtime"]?["stopReason"]?["detail"]?.stringValue?.hasPrefix("quota:") == true, "\(evicted["runtime"] ?? .null)")
            #expect(try await api.request(.get, "/v1/sessions/\(bobs)", token: bobToken)["runtime"]?["state"] == "running", "bob's runtime untouched")

            // Both runtimes busy: none idle to evict. A new session is 429 and nothing is made.
            _ = try await api.waitForRuntime(third, state: "running", within: 30)
            #expect(try await api.request(.post, "/v1/sessions/\(third)/initiate").status == 202)
            #expect(try await api.request(.post, "/v1/sessions/\(second)/initiate").status == 202)
            try await eventually(within: 30, "both executions running") {
                let views = [try await api.request(.get, "/v1/sessions/\(second)"), try await api.request(.get, "/v1/sessions/\(third)")]
                return views.allSatisfy { $0["activeExecutionId"] != .null }
            }
            let before = try await api.request(.get, "/v1/sessions?limit=100")["sessions"]?.arrayValue?.count
            let refused = try await api.request(.post, "/v1/sessions", json: ["prompt": "say four"])
            #expect(refused.status == 429 && refused.errorCode == "QUOTA_EXCEEDED", "\(refused.text)")
            #expect(refused["error"]?["limit"] == 2 && refused["error"]?["retryable"] == true)
            #expect(try await api.request(.get, "/v1/sessions?limit=100")["sessions"]?.arrayValue?.count == before, "nothing created")
            // A cold start of the evicted session is refused the same way, and changes nothing.
            let cold = try await api.request(.post, "/v1/sessions/\(first)/initiate")
            #expect(cold.status == 429 && cold.errorCode == "QUOTA_EXCEEDED", "\(cold.text)")
            #expect(try await api.request(.get, "/v1/sessions/\(first)")["runtime"]?["state"] == "stopped")
            #expect(try await api.request(.get, "/v1/sessions/\(first)")["initiatedAt"] == .null)
            // Bob is not limited by this user's runtimes.
            #expect(try await api.request(.post, "/v1/sessions", token: bobToken, json: ["prompt": "say bob two"]).status == 201)
        }
    }
}
