import CloudAgentCore
import Foundation
import Logging
import Prometheus

/// Fires a session's rules when its wake-up is due: one `SessionReducer.evaluate` transaction
/// (which also writes the next wake-up), then its effects. The scheduler runs each session's
/// evaluation in a task of its own, and an evaluation holds no lock, so a slow session never
/// delays another's timers.
public final class RuleRunner: Sendable {
    let ledger: SessionLedger
    let effects: EffectRunner
    let metrics: ServerMetrics
    let logger: Logger

    init(ledger: SessionLedger, effects: EffectRunner, metrics: ServerMetrics, logger: Logger) {
        self.ledger = ledger
        self.effects = effects
        self.metrics = metrics
        self.logger = logger
    }

    /// Evaluates a session's rules at now, carries out what they decide and returns its next
    /// wake-up. Idempotent: evaluating again changes nothing. A `timer` (a stored wake-up
    /// firing) goes ahead only while the stored wake-up is due (another node may have fired it).
    public func evaluate(_ id: SessionID, timer: Bool = false) async -> Date? {
        metrics.wakeUpsFired.increment()
        do {
            let committed = try await ledger.update(id, forRules: true) { state, context in
                SessionReducer.evaluate(state, context: context, timer: timer)
            }
            await effects.run(committed.effects, for: id)
            return committed.output
        } catch {
            logger.error("evaluating a session failed; retrying in 1 s", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            return ledger.clock.now().adding(milliseconds: 1000)
        }
    }
}
