import CloudAgentAgents
import CloudAgentJSON
import Testing

/// Each agent's own usage report, as the runtime's `usage` event carries it.
@Suite("Usage as each agent reports it")
struct UsageParsingTests {
    @Test("a jsonl usage line (the scripted agent's, a command agent's) is the execution's usage so far; one without counts is an error event")
    func jsonLines() {
        var parser = NormalizedJSONLinesParser()
        #expect(
            parser.parse(line: #"{"type":"usage","inputTokens":110,"outputTokens":22,"costUsd":0.75}"#)
                == [.usage(AgentUsage.data(input: 110, output: 22, costUsd: 0.75))])
        #expect(
            parser.parse(line: #"{"type":"usage","inputTokens":5,"outputTokens":1,"cacheReadTokens":7,"cacheWriteTokens":3}"#)
                == [.usage(AgentUsage.data(input: 5, output: 1, cacheRead: 7, cacheWrite: 3))])
        guard case .agent(let error)? = parser.parse(line: #"{"type":"usage","inputTokens":-1,"outputTokens":"x"}"#).first else {
            Issue.record("a bad usage line is not an error event")
            return
        }
        #expect(error["kind"] == "error")
    }

    @Test("ACP: the prompt answer's usage gives the tokens (thoughts count as output), usage_update the session's cost in USD")
    func acp() {
        var reader = ACPTurnReader()
        _ = reader.read(
            update: ["sessionUpdate": "usage_update", "used": 1200, "size": 200_000, "cost": ["amount": .number(0.04), "currency": "USD"]], raw: "")
        #expect(reader.sessionCostUsd == 0.04)
        // Another currency is not dollars: ignored.
        _ = reader.read(update: ["sessionUpdate": "usage_update", "used": 1300, "size": 200_000, "cost": ["amount": 9, "currency": "EUR"]], raw: "")
        #expect(reader.sessionCostUsd == 0.04)
        let result: JSONValue = [
            "stopReason": "end_turn",
            "usage": ["inputTokens": 900, "outputTokens": 40, "thoughtTokens": 10, "cachedReadTokens": 300, "cachedWriteTokens": 20, "totalTokens": 1270],
        ]
        #expect(ACPUsage.data(result: result, costUsd: 0.03) == AgentUsage.data(input: 900, output: 50, cacheRead: 300, cacheWrite: 20, costUsd: 0.03))
        #expect(ACPUsage.data(result: ["stopReason": "end_turn"], costUsd: nil) == nil)
        #expect(ACPUsage.data(result: ["stopReason": "end_turn"], costUsd: 0.01) == AgentUsage.data(input: 0, output: 0, costUsd: 0.01))
    }
}
