import CloudAgentCore
import Foundation
import Synchronization

/// Carries out what a committed decision decided, after its commit and outside any lock. Every
/// effect is idempotent. `engine` is the way further changes are made (a launch records itself
/// through it): it is handed over with each call, never stored, so nothing is bound late.
package protocol SessionEffects: Sendable {
    /// Runs `effects` of the change `committed` (nil: the decision changed nothing) of session
    /// `id`, in order. Slow ones run as background jobs unless `awaiting` (DELETE waits for the
    /// processes to be gone).
    func run(_ effects: [SessionEffect], of committed: SessionChange?, for id: SessionID, awaiting: Bool, engine: Engine) async
}

/// The one way a session changes. `perform` runs one store transaction that reads the session,
/// decides with a pure `SessionReducer` function and — on the state that decision leaves — the
/// session's rules (`SessionReducer.ruled`), and writes the change, whatever the rules did after
/// it and the session's next wake-up as one write. After the commit: its events go to live
/// subscribers, the session's waiters are woken, each decision note becomes a log line (the
/// ledger), the scheduler is armed with the committed next wake-up, and the effects run.
package struct Engine: Sendable {
    package let ledger: SessionLedger
    package let scheduler: WakeUpScheduler
    package let effects: any SessionEffects
    package let wakeUps: WakeUpTickets

    /// Decides and commits one change of session `id` (with its rules, per `rules`), then
    /// carries it out: `first` is told the output before the effects run (a runtime is welcomed
    /// before it is sent the outbox). Throws what `decide` throws, with nothing written.
    @discardableResult
    package func perform<Output: Sendable>(
        _ id: SessionID, rules: RulePass = .afterChange, awaiting: Bool = false, first: (@Sendable (Committed<Output>) async -> Void)? = nil,
        _ decide: @escaping @Sendable (SessionState?, SessionContext) throws -> Decision<SessionReducer.Outcome<Output>>
    ) async throws -> Committed<Output> {
        try await performRuled(id, rules: rules, awaiting: awaiting, first: first, decide).committed
    }

    /// `perform`, also returning the session's next wake-up as the transaction left it (nil when
    /// the decision changed nothing, `.some(nil)` for none).
    package func performRuled<Output: Sendable>(
        _ id: SessionID, rules: RulePass, awaiting: Bool = false, first: (@Sendable (Committed<Output>) async -> Void)? = nil,
        _ decide: @escaping @Sendable (SessionState?, SessionContext) throws -> Decision<SessionReducer.Outcome<Output>>
    ) async throws -> (committed: Committed<Output>, nextWakeUp: Date??) {
        let wakeUps = self.wakeUps
        let committed = try await ledger.update(id, forRules: true) { state, context -> Decision<SessionReducer.Outcome<Performed<Output>>> in
            let ruled = try SessionReducer.ruled(state, try decide(state, context), rules: rules, context: context)
            // Taken in the transaction: tickets of one session follow its commits.
            let performed = Performed(ruled: ruled.output.output, ticket: wakeUps.take())
            return Decision(change: ruled.change, effects: ruled.effects, output: SessionReducer.Outcome(output: performed, notes: ruled.output.notes))
        }
        let performed = committed.output
        if let next = performed.ruled.nextWakeUp {
            await scheduler.arm(id, at: next, ticket: performed.ticket, of: wakeUps)
        }
        let result = Committed(output: performed.ruled.output, effects: committed.effects, events: committed.events, change: committed.change)
        if let first { await first(result) }
        await effects.run(committed.effects, of: committed.change, for: id, awaiting: awaiting, engine: self)
        return (result, performed.ruled.nextWakeUp)
    }

    /// Runs effects a crash may have left undone (found at a start or a takeover), as their
    /// decision's would: each is idempotent.
    package func redo(_ effects: [SessionEffect], for id: SessionID) async {
        await self.effects.run(effects, of: nil, for: id, awaiting: false, engine: self)
    }

    /// Arms a new session's first wake-up (written with its record).
    package func arm(_ id: SessionID, at due: Date?) async {
        await scheduler.arm(id, at: due, ticket: wakeUps.take(), of: wakeUps)
    }

    private struct Performed<Value: Sendable>: Sendable {
        var ruled: SessionReducer.Ruled<Value>
        var ticket: UInt64
    }
}

/// Orders the scheduler's arming by commit: a ticket is taken inside each transaction, and a
/// session's wake-up is armed only by a ticket later than the last one that armed it, so that
/// two changes of a session whose arms race never leave the older one's wake-up armed.
package final class WakeUpTickets: Sendable {
    private struct State {
        var last: UInt64 = 0
        var armed: [SessionID: UInt64] = [:]
    }

    private let state = Mutex(State())
    /// Tickets older than this many are forgotten (a session not changed since is armed by any).
    package static let horizon: UInt64 = 4096

    package func take() -> UInt64 {
        state.withLock { state in
            state.last += 1
            return state.last
        }
    }

    /// Whether `ticket` may arm session `id` (it is later than the last that did); records it.
    package func claim(_ id: SessionID, _ ticket: UInt64) -> Bool {
        state.withLock { state in
            if let armed = state.armed[id], armed > ticket { return false }
            state.armed[id] = ticket
            if state.armed.count > Int(2 * Self.horizon), state.last > Self.horizon {
                let oldest = state.last - Self.horizon
                state.armed = state.armed.filter { $0.value >= oldest }
            }
            return true
        }
    }
}

extension WakeUpScheduler {
    /// Arms (or disarms) a session's wake-up unless a later commit armed it already. The claim
    /// and the arm are one step of the scheduler.
    package func arm(_ id: SessionID, at due: Date?, ticket: UInt64, of tickets: WakeUpTickets) {
        guard tickets.claim(id, ticket) else { return }
        arm(id, at: due)
    }
}
