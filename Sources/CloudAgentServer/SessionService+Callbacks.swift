import CloudAgentCore
import Foundation
import Logging

extension SessionService {
    /// Puts the completion callback of an execution that just ended into the store's outbox
    /// (once per execution) and wakes the dispatcher. Nothing when the session has no callback.
    /// Called after the commit that ended the execution; a failure is logged, never thrown, so
    /// that it cannot undo the end of the execution.
    func enqueueCallback(for execution: Execution, session: SessionRecord) async {
        guard let callback = session.spec.callback, !execution.status.isActive else { return }
        let now = clock.now()
        do {
            let delivery = CallbackDelivery(
                sessionId: session.id, executionId: execution.id, url: callback.url, headers: callback.headers,
                body: try Self.callbackBody(for: execution, session: session), nextAttemptAt: now, createdAt: now
            )
            if try await store.enqueueCallback(delivery) { callbackWakeUps.signal() }
        } catch {
            logger.error("enqueuing a callback failed", metadata: [
                "sessionId": "\(session.id)", "executionId": "\(execution.id)", "error": "\(String(reflecting: error))",
            ])
        }
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
