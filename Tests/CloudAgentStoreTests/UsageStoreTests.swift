import CloudAgentCore
import CloudAgentTestSupport
import Foundation
import Testing

/// Usage per owner, day and agent: added up by each change, read by range, kept when the
/// session goes; an execution's own usage saved with it. The same from every backend.
@Suite("Store: usage")
struct UsageStoreTests {
    @Test(arguments: StoreBackend.allCases)
    func usageDaysAddUpAndOutliveTheSession(backend: StoreBackend) async throws {
        try await withStore(backend) { store in
            let session = try await store.insertFixtureSession()
            let bob = Owner(user: "bob", org: "acme")
            var execution = Fixture.execution(of: session.id, at: 10)
            execution.usage = Usage(inputTokens: 7, outputTokens: 3, cacheReadTokens: 2, cacheWriteTokens: 1, costUsd: 0.125)
            try await store.commit(
                SessionChange(
                    sessionId: session.id, newExecution: execution,
                    usage: [
                        UsageDay(owner: .local, day: "2026-12-06", agent: "codex", usage: Usage(inputTokens: 10, outputTokens: 1), executions: 1),
                        UsageDay(owner: .local, day: "2026-12-07", agent: "claude-code", usage: Usage(inputTokens: 5, costUsd: 0.5), executions: 1),
                        UsageDay(owner: bob, day: "2026-12-07", agent: "claude-code", usage: Usage(inputTokens: 99, costUsd: 9), executions: 1),
                    ]))
            try await store.commit(
                SessionChange(
                    sessionId: session.id,
                    usage: [UsageDay(owner: .local, day: "2026-12-07", agent: "claude-code", usage: Usage(outputTokens: 4, costUsd: 0.25), executions: 0)]
                ))
            #expect(try await store.execution(execution.id)?.usage == execution.usage)
            let days = try await store.usage(of: .local, from: "2026-12-01", to: "2026-12-31")
            #expect(days.map(\.day) == ["2026-12-06", "2026-12-07"])
            #expect(days.last?.usage == Usage(inputTokens: 5, outputTokens: 4, costUsd: 0.75))
            #expect(days.last?.executions == 1)
            #expect(days.first?.usage.costUsd == nil)
            #expect(try await store.usage(of: .local, from: "2026-12-07", to: "2026-12-07").count == 1)
            #expect(try await store.usage(of: bob, from: "2026-12-07", to: "2026-12-07").first?.usage.inputTokens == 99)
            #expect(try await store.deleteSession(session.id))
            #expect(try await store.usage(of: .local, from: "2026-12-01", to: "2026-12-31").count == 2)
        }
    }
}
