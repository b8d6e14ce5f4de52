import Crypto
import Foundation

/// One callback in the durable outbox: the exact bytes to POST, where, and when to try next.
/// At most one per execution for its completion, and one per input request of it.
public struct CallbackDelivery: Sendable, Equatable {
    public var id: UUID
    public var sessionId: SessionID
    public var executionId: ExecutionID
    public var url: String
    /// The callback's headers, still sealed: they are opened only to send them.
    public var headers: [String: SealedValue]
    /// The JSON body, byte for byte as it is signed and sent on every attempt.
    public var body: String
    /// Attempts made so far.
    public var attempts: Int
    public var nextAttemptAt: Date
    public var createdAt: Date
    /// Why the latest attempt failed.
    public var lastError: String?
    /// The input request this callback announces (`input.requested`); nil for a completion.
    public var requestId: String?

    public init(
        id: UUID = UUID(), sessionId: SessionID, executionId: ExecutionID, url: String, headers: [String: SealedValue] = [:],
        body: String, attempts: Int = 0, nextAttemptAt: Date, createdAt: Date, lastError: String? = nil, requestId: String? = nil
    ) {
        self.requestId = requestId
        self.id = id
        self.sessionId = sessionId
        self.executionId = executionId
        self.url = url
        self.headers = headers
        self.body = body
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.createdAt = createdAt
        self.lastError = lastError
    }
}

/// When to try a callback again. Network errors, 429 and 5xx are worth retrying (the receiver
/// may recover); any other answer outside 2xx is the receiver refusing, and retrying would not help.
public struct CallbackRetryPolicy: Sendable, Equatable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int
    /// The wait after the first failed attempt; each later wait doubles, up to `maxDelayMs`.
    public var baseDelayMs: Int64
    public var maxDelayMs: Int64

    /// Six attempts, with waits of 2 s, 4 s, 8 s, 16 s and 32 s between them (a minute in all).
    public init(maxAttempts: Int = 6, baseDelayMs: Int64 = 2000, maxDelayMs: Int64 = 300_000) {
        self.maxAttempts = maxAttempts
        self.baseDelayMs = baseDelayMs
        self.maxDelayMs = maxDelayMs
    }

    /// What to do after an attempt.
    public enum Decision: Sendable, Equatable {
        case delivered
        case retry(at: Date)
        case giveUp
    }

    /// Decides after attempt number `attempt` (from 1), which got HTTP `status`, or no answer at all (nil).
    public func decide(attempt: Int, status: Int?, now: Date) -> Decision {
        if let status, (200..<300).contains(status) { return .delivered }
        guard Self.isRetryable(status), attempt < maxAttempts else { return .giveUp }
        return .retry(at: now.adding(milliseconds: delayMs(afterAttempt: attempt)))
    }

    /// The wait after failed attempt number `attempt`: base · 2^(attempt−1), capped.
    public func delayMs(afterAttempt attempt: Int) -> Int64 {
        let doublings = max(0, attempt - 1)
        guard doublings < 40 else { return maxDelayMs }
        let (delay, overflow) = baseDelayMs.multipliedReportingOverflow(by: Int64(1) << doublings)
        return overflow ? maxDelayMs : min(delay, maxDelayMs)
    }

    public static func isRetryable(_ status: Int?) -> Bool {
        guard let status else { return true }
        return status == 429 || (500..<600).contains(status)
    }
}

/// The signature on every callback request: `X-CloudAgent-Signature: sha256=<hex>` of the HMAC-SHA256
/// of `"<timestamp>.<body>"`, keyed with the UTF-8 bytes of the server's signing key.
public enum CallbackSignature {
    /// The server setting that holds the signing key.
    public static let settingKey = "callback-signing-key"
    public static let timestampHeader = "X-CloudAgent-Timestamp"
    public static let signatureHeader = "X-CloudAgent-Signature"

    /// A new signing key: 32 random bytes, hex (64 characters).
    public static func generateKey() -> String {
        SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
    }

    /// The header value, `sha256=<hex>`, for a body sent at `timestamp` (unix seconds).
    public static func sign(body: String, timestamp: Int64, key: String) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(timestamp).\(body)".utf8), using: SymmetricKey(data: Data(key.utf8)))
        return "sha256=" + mac.map { String(format: "%02x", $0) }.joined()
    }
}

extension EventType {
    /// A completion callback got a 2xx: `{executionId, url, status, attempts}`.
    public static let callbackDelivered = "callback.delivered"
    /// A completion callback was given up: `{executionId, url, status (null without an answer), error, attempts}`.
    public static let callbackFailed = "callback.failed"
}

extension CallbackDelivery {
    /// The completion callback of an execution that has ended, for the outbox: written in the
    /// same transaction as the end, so that no crash can lose it. Nil when the session has no
    /// callback or the execution is still active.
    public static func completion(of execution: Execution, session: SessionRecord, now: Date) -> CallbackDelivery? {
        guard let callback = session.spec.callback, !execution.status.isActive else { return nil }
        return CallbackDelivery(
            sessionId: session.id, executionId: execution.id, url: callback.url, headers: callback.headers,
            body: body(of: execution, session: session), nextAttemptAt: now, createdAt: now
        )
    }

    /// The callback of an input request nobody has answered yet (an agent waits), for the
    /// outbox, in the transaction that records the request. Nil when the session has no callback.
    public static func inputRequested(_ request: InputRequest, session: SessionRecord, now: Date) -> CallbackDelivery? {
        guard let callback = session.spec.callback else { return nil }
        var body = request.eventData
        body["event"] = .string(EventType.inputRequested)
        body["sessionId"] = .string(session.id.rawValue)
        body["executionId"] = .string(request.executionId.rawValue)
        body["requestedAt"] = JSONValue(request.requestedAt)
        return CallbackDelivery(
            sessionId: session.id, executionId: request.executionId, url: callback.url, headers: callback.headers,
            body: JSONText.encode(.object(body)), nextAttemptAt: now, createdAt: now, requestId: request.id
        )
    }

    /// The callback's JSON body: `{sessionId, executionId, status, exitCode, error, interruptReason,
    /// workBranch, completedAt}`, absent values as explicit nulls, keys sorted.
    public static func body(of execution: Execution, session: SessionRecord) -> String {
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
        return JSONText.encode(body)
    }
}
