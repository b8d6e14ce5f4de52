import CloudAgentCore
import Foundation
import Logging

extension SessionService {
    /// The completion callback of an execution that ends in this change, for the change's
    /// outbox rows (`SessionChange.callbacks`): written in the same transaction as the end, so
    /// that no crash can lose it. Empty when the session has no callback.
    func callbacks(for execution: Execution, session: SessionRecord) throws -> [CallbackDelivery] {
        guard let callback = session.spec.callback, !execution.status.isActive else { return [] }
        let now = clock.now()
        return [CallbackDelivery(
            sessionId: session.id, executionId: execution.id, url: callback.url, headers: callback.headers,
            body: try Self.callbackBody(for: execution, session: session), nextAttemptAt: now, createdAt: now
        )]
    }

    /// Puts the completion callback of an execution that ended into the outbox on its own, after
    /// the commit that ended it: only for a session that auto-commits, whose callback follows
    /// the commit and push. A failure is logged, never thrown.
    func enqueueCallback(for execution: Execution, session: SessionRecord) async {
        do {
            for delivery in try callbacks(for: execution, session: session) where try await store.enqueueCallback(delivery) {
                callbackWakeUps.signal()
            }
        } catch {
            logger.error("enqueuing a callback failed", metadata: [
                "sessionId": "\(session.id)", "executionId": "\(execution.id)", "error": "\(String(reflecting: error))",
            ])
        }
    }

    /// Commits a change, then wakes the callback dispatcher when the change carried deliveries.
    @discardableResult
    func commitSignallingCallbacks(_ change: SessionChange) async throws -> [Event] {
        let events = try await commit(change)
        if !change.callbacks.isEmpty { callbackWakeUps.signal() }
        return events
    }

    /// The callback's JSON body: `{sessionId, executionId, status, exitCode, error, interruptReason,
    /// workBranch, completedAt}`, absent values as explicit nulls, keys sorted.
    static func callbackBody(for execution: Execution, session: SessionRecord) throws -> String {
        let body: JSONValue = [
            "sessionId": .string(session.id.rawValue),
            "executionId": .string(execution.id.rawValue),
            "status": .string(execution.status.rawValue),
            "exitCode": JSONValue(execution.exitCode.map(Int64.init)),
            "error": JSONValue(execution.error),
            "interruptReason": JSONValue(execution.interruptReason),
            "workBranch": JSONValue(session.workBranch),
            "completedAt": JSONValue(execution.completedAt),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(body), as: UTF8.self)
    }
}
