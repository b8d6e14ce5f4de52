import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import HTTPTypes
import Testing

/// Usage through the real server and a real runtime: what the agent reports is on the
/// execution, summed on the session, listed per day and agent, and counted in the metrics.
@Suite("Usage: tokens and cost from each agent's own report", .processes)
struct UsageScenarioTests {
    @Test("the scripted agent's usage lines: on the execution (null without a report), summed on the session, per day in /v1/usage, in the metrics")
    func scriptedUsage() async throws {
        try await TestServer().run { api in
            let id = try await api.createSession(["prompt": "usage 100 20 0.5\nsay working\nusage 50 5 0.25"])
            #expect(try await api.request(.post, "/v1/sessions/\(id)/initiate").status == 202)
            try await eventually(within: 30, "the first execution to end") {
                try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]?["status"] == "completed"
            }
            let first = try await api.request(.get, "/v1/sessions/\(id)")["latestExecution"]
            #expect(first?["usage"]?["inputTokens"] == 150)
            #expect(first?["usage"]?["outputTokens"] == 25)
            #expect(first?["usage"]?["costUsd"]?.doubleValue == 0.75)
            #expect(first?["usage"]?["source"] == "agent")

            // An execution whose agent reports nothing has usage null, not zero.
            #expect(try await api.request(.post, "/v1/sessions/\(id)/messages", json: ["prompt": "say nothing to report"]).status == 202)
            try await eventually(within: 30, "the second execution to end") {
                let view = try await api.request(.get, "/v1/sessions/\(id)")
                return view["executionCount"] == 2 && view["latestExecution"]?["status"] == "completed"
            }
            let view = try await api.request(.get, "/v1/sessions/\(id)")
            #expect(view["latestExecution"]?["usage"] == .null)
            #expect(view["usage"]?["inputTokens"] == 150 && view["usage"]?["costUsd"]?.doubleValue == 0.75)
            #expect(try await api.createSession(["prompt": "say fresh"]).rawValue.isEmpty == false)

            let today = UsageDay.day(of: Date())
            let usage = try await api.request(.get, "/v1/usage")
            #expect(usage.status == 200, "\(usage.text)")
            #expect(usage["to"]?.stringValue == today)
            let days = usage["days"]?.arrayValue ?? []
            #expect(days.count == 1)
            #expect(days.first?["day"]?.stringValue == today && days.first?["agent"] == "scripted")
            #expect(days.first?["inputTokens"] == 150 && days.first?["outputTokens"] == 25 && days.first?["executions"] == 1)
            #expect(usage["total"]?["costUsd"]?.doubleValue == 0.75)
            // Bad ranges are 400s naming the field; another user sees none of it.
            #expect(try await api.request(.get, "/v1/usage?from=2026-13-01")["error"]?["field"] == "from")
            #expect(try await api.request(.get, "/v1/usage?to=yesterday")["error"]?["field"] == "to")
            #expect(try await api.request(.get, "/v1/usage?from=2026-12-08&to=2026-12-07").status == 400)
            #expect(try await api.request(.get, "/v1/usage?from=2024-01-01&to=2026-12-07").status == 400)
            #expect(try await api.request(.get, "/v1/usage", token: nil).status == 401)

            let metrics = try await api.request(.get, "/metrics", token: nil).text
            #expect(metrics.contains(#"cloud_agent_agent_tokens_total{agent="scripted",kind="input"} 150"#), "\(metrics)")
            #expect(metrics.contains(#"cloud_agent_agent_cost_usd_total{agent="scripted"} 0.75"#))
        }
    }
}
