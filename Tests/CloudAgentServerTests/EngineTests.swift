import CloudAgentCore
import Foundation
import Synchronization
import Testing

@testable import CloudAgentEngine
@testable import CloudAgentServer

/// The one way through the engine (`Engine.perform`): a decision and the session's rules in one
/// transaction, the scheduler armed from the commit.
@Suite("One way through the engine")
struct EngineTests {
    final class Counter: Sendable {
        private let count = Mutex(0)
        func increment() { count.withLock { $0 += 1 } }
        var value: Int { count.withLock { $0 } }
    }

    /// Counts the store transactions of session `id` from now on.
    static func countTransactions(_ h: EngineHarness, of id: SessionID) async -> Counter {
        let counter = Counter()
        await h.memory.setUpdateHook { session in
            if session == id { counter.increment() }
        }
        return counter
    }

    @Test("a message is one transaction: the execution, its execute row and the session's next wake-up, armed from the commit")
    func messageIsOneTransaction() async throws {
        let h = try EngineHarness()
        let (id, connection) = try await h.running()
        let first = try await h.sessions.startExecution(id, owner: h.owner, message: nil)
        try await h.complete(first.id, on: connection)
        await h.host.settle()
        let transactions = await Self.countTransactions(h, of: id)
        let execution = try await h.sessions.startExecution(id, owner: h.owner, message: SessionService.MessageInput(prompt: "again"))
        #expect(transactions.value == 1)
        // The pending deadline, written with the execution.
        let due = execution.startedAt.adding(milliseconds: h.timing.pendingTimeoutMs)
        #expect(try await h.store.wakeUp(of: id) == due)
        #expect(await h.engine.performer.scheduler.armedCount == 1)
        #expect(try await h.store.commands(of: id, after: 0).map(\.command) == [.execute(execution.id)])
    }

    @Test("a change the rules act on at once is stopped in the same transaction")
    func rulesActInTheChangesTransaction() async throws {
        let h = try EngineHarness()
        let (id, _) = try await h.running()
        await h.host.settle()
        h.clock.advance(milliseconds: 30_000)
        // The stop's second phase (the processes taken down, then recorded) waits.
        h.host.terminateGate.close()
        let transactions = await Self.countTransactions(h, of: id)
        // A shorter idle timeout than the runtime has been idle: the idle rule stops it now.
        let updated = try await h.sessions.patch(id, owner: h.owner, input: try SessionInput.parsePatch(["idleTimeoutMs": 10_000]))
        #expect(updated.spec.idleTimeoutMs == 10_000)
        #expect(transactions.value == 1)
        let session = try #require(try await h.session(id))
        #expect(session.runtime.state == .stopping)
        #expect(session.runtime.stopReason?.rule == .idle)
        h.host.terminateGate.open()
        await h.host.settle()
        #expect(try await h.session(id)?.runtime.state == .stopped)
    }

    @Test("a wake-up armed by an older commit never replaces a later commit's")
    func armsFollowCommits() async throws {
        let tickets = WakeUpTickets()
        let id = SessionID()
        let older = tickets.take()
        let newer = tickets.take()
        #expect(tickets.claim(id, newer))
        #expect(!tickets.claim(id, older))
        #expect(tickets.claim(id, tickets.take()))
        #expect(tickets.claim(SessionID(), older))
    }
}
