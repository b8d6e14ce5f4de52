import CloudAgentCore
import Foundation
import Logging
import Prometheus

/// Fires a session's rules when its wake-up is due: one transaction performed by the engine
/// whose decision is the rules' alone (`RulePass.always`; it also writes the next wake-up), then
/// its effects. (After any other change the rules are evaluated in that change's transaction.)
/// The scheduler runs each session's evaluation in a task of its own, and an evaluation holds
/// no lock, so a slow session never delays another's timers.
public final class RuleRunner: Sendable {
    package let ledger: SessionLedger
    package let engine: Engine
    package let metrics: ServerMetrics
    package let logger: Logger

    package init(ledger: SessionLedger, engine: Engine, metrics: ServerMetrics, logger: Logger) {
        self.ledger = ledger
        self.engine = engine
        self.metrics = metrics
        self.logger = logger
    }

    /// Evaluates a session's rules at now, carries out what they decide and returns its next
    /// wake-up. Idempotent: evaluating again changes nothing. A `timer` (a stored wake-up
    /// firing) goes ahead only while the stored wake-up is due (another node may have fired it).
    public func evaluate(_ id: SessionID, timer: Bool = false) async -> Date? {
        metrics.wakeUpsFired.increment()
        do {
            // The decision is the rules' alone.
            let performed = try await engine.performRuled(id, rules: .always(timer: timer)) { _, _ in
                Decision(output: SessionReducer.Outcome(output: (), notes: []))
            }
            return performed.nextWakeUp ?? nil
        } catch {
            logger.error("evaluating a session failed; retrying in 1 s", metadata: ["sessionId": "\(id)", "error": "\(String(reflecting: error))"])
            return ledger.clock.now().adding(milliseconds: 1000)
        }
    }
}
