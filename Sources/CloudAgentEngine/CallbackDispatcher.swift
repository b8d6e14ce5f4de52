import AsyncHTTPClient
import CloudAgentCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import Synchronization

/// Delivers completion callbacks from the store's outbox: each is POSTed with its headers and a
/// signature, retried with exponential backoff on network errors, 429 and 5xx, given up on any
/// other answer outside 2xx, and its outcome recorded as a `callback.delivered` or
/// `callback.failed` event. The outbox is durable, so deliveries pending at a shutdown go out
/// after the next start. The loop sleeps until the earliest due delivery and is woken early
/// when one is enqueued.
public final class CallbackDispatcher: Service, Sendable {
    /// Deliveries attempted at once.
    package static let batchSize = 16
    /// Headers that frame the request: the client sets them, a callback's own are dropped.
    package static let framingHeaders: Set<String> = ["host", "content-length", "transfer-encoding", "connection"]

    private let ledger: SessionLedger
    private let secretBox: SecretBox
    private let wakeUps: WakeSignal
    private let policy: CallbackRetryPolicy
    private let requestTimeoutMs: Int64
    private let logger: Logger

    package init(
        ledger: SessionLedger, secretBox: SecretBox, wakeUps: WakeSignal, policy: CallbackRetryPolicy, requestTimeoutMs: Int64 = 30_000, logger: Logger
    ) {
        self.ledger = ledger
        self.secretBox = secretBox
        self.wakeUps = wakeUps
        self.policy = policy
        self.requestTimeoutMs = requestTimeoutMs
        self.logger = logger
    }

    private var store: any SessionStore { ledger.store }

    public func run() async throws {
        // Redirects are not followed: a signed body and its headers go only where they were sent.
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(10))
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        await cancelWhenGracefulShutdown {
            await self.loop(client)
        }
        try await client.shutdown()
    }

    private func loop(_ client: HTTPClient) async {
        var signingKey: String?
        while !Task.isCancelled {
            do {
                let key: String
                if let signingKey {
                    key = signingKey
                } else {
                    key = try await store.settingSavingIfAbsent(CallbackSignature.settingKey, value: CallbackSignature.generateKey())
                    signingKey = key
                }
                let due = try await store.dueCallbacks(before: ledger.clock.now(), limit: Self.batchSize)
                if due.isEmpty {
                    // A minute at most: a delivery enqueued by another node is found on the next look.
                    let next = try await store.nextCallbackDue()
                    let delayMs = next.map { max(1, $0.milliseconds(since: ledger.clock.now())) } ?? 60_000
                    await wakeUps.wait(upToMilliseconds: min(delayMs, 60_000), on: ledger.clock)
                    continue
                }
                await withTaskGroup(of: Void.self) { group in
                    for delivery in due {
                        group.addTask { await self.attempt(delivery, client: client, signingKey: key) }
                    }
                }
            } catch {
                logger.error("reading the callback outbox failed; retrying in 1 s", metadata: ["error": "\(String(reflecting: error))"])
                await wakeUps.wait(upToMilliseconds: 1000, on: ledger.clock)
            }
        }
    }

    /// The outcome of one attempt: an HTTP answer, or why there was none.
    private enum Answer {
        case status(Int)
        case noAnswer(String)
        /// The request cannot be made (its sealed headers do not open): retrying cannot help.
        case unsendable(String)

        var status: Int? { if case .status(let code) = self { code } else { nil } }

        var error: String {
            switch self {
            case .status(let code): "HTTP \(code)"
            case .noAnswer(let reason), .unsendable(let reason): reason
            }
        }
    }

    private func attempt(_ delivery: CallbackDelivery, client: HTTPClient, signingKey: String) async {
        let number = delivery.attempts + 1
        let answer: Answer
        do {
            let request = try makeRequest(delivery, signingKey: signingKey, at: ledger.clock.now())
            let response = try await client.execute(request, timeout: .milliseconds(requestTimeoutMs))
            answer = .status(Int(response.status.code))
            // The answer's body is not needed, but reading it lets the connection be reused.
            _ = try? await response.body.collect(upTo: 64 * 1024)
        } catch let error as SecretBox.OpenError {
            answer = .unsendable(error.description)
        } catch {
            // A shutdown cut the request short: the delivery stays due and goes out after the next start.
            if Task.isCancelled { return }
            answer = .noAnswer(String(String(describing: error).prefix(500)))
        }
        let decision: CallbackRetryPolicy.Decision =
            if case .unsendable = answer {
                .giveUp
            } else {
                policy.decide(attempt: number, status: answer.status, now: ledger.clock.now())
            }
        let metadata: Logger.Metadata = [
            "sessionId": "\(delivery.sessionId)", "executionId": "\(delivery.executionId)", "attempts": "\(number)",
            "status": "\(answer.status.map(String.init) ?? "-")",
        ]
        do {
            switch decision {
            case .delivered:
                guard try await store.markCallbackDelivered(delivery.id) else { return }
                logger.info("callback delivered", metadata: metadata)
                await record(
                    delivery, type: EventType.callbackDelivered,
                    data: [
                        "executionId": .string(delivery.executionId.rawValue), "url": .string(delivery.url),
                        "status": JSONValue(answer.status.map(Int64.init)), "attempts": JSONValue(Int64(number)),
                    ])
            case .retry(let at):
                try await store.rescheduleCallback(delivery.id, nextAttemptAt: at, lastError: answer.error)
                logger.debug(
                    "callback attempt failed; retrying",
                    metadata: metadata.merging([
                        "error": "\(answer.error)", "nextAttemptAt": "\(Timestamp.format(at))",
                    ]) { _, new in new })
            case .giveUp:
                guard try await store.markCallbackFailed(delivery.id) else { return }
                logger.warning("callback failed", metadata: metadata.merging(["error": "\(answer.error)"]) { _, new in new })
                await record(
                    delivery, type: EventType.callbackFailed,
                    data: [
                        "executionId": .string(delivery.executionId.rawValue), "url": .string(delivery.url),
                        "status": JSONValue(answer.status.map(Int64.init)), "error": .string(answer.error),
                        "attempts": JSONValue(Int64(number)),
                    ])
            }
        } catch {
            logger.error("recording a callback attempt failed", metadata: metadata.merging(["error": "\(String(reflecting: error))"]) { _, new in new })
        }
    }

    /// The POST: the callback's headers (opened only here), then the content type, the
    /// timestamp and the signature of `"<timestamp>.<body>"`.
    private func makeRequest(_ delivery: CallbackDelivery, signingKey: String, at now: Date) throws -> HTTPClientRequest {
        var request = HTTPClientRequest(url: delivery.url)
        request.method = .POST
        for (name, sealed) in delivery.headers.sorted(by: { $0.key < $1.key }) where !Self.framingHeaders.contains(name.lowercased()) {
            request.headers.add(name: name, value: try secretBox.open(sealed))
        }
        if !request.headers.contains(name: "User-Agent") { request.headers.add(name: "User-Agent", value: "cloud-agent") }
        let timestamp = Int64(now.timeIntervalSince1970.rounded(.down))
        request.headers.replaceOrAdd(name: "Content-Type", value: "application/json")
        request.headers.replaceOrAdd(name: CallbackSignature.timestampHeader, value: String(timestamp))
        request.headers.replaceOrAdd(
            name: CallbackSignature.signatureHeader, value: CallbackSignature.sign(body: delivery.body, timestamp: timestamp, key: signingKey)
        )
        request.body = .bytes(ByteBuffer(string: delivery.body))
        return request
    }

    /// Appends an event to the delivery's session (appending reads nothing: no decision is
    /// needed). A session deleted meanwhile has nothing to record.
    private func record(_ delivery: CallbackDelivery, type: String, data: [String: JSONValue]) async {
        var data = data
        // An input request's callback names it (a completion's has none).
        if let requestId = delivery.requestId { data["requestId"] = .string(requestId) }
        let id = delivery.sessionId
        let event = NewEvent(executionId: delivery.executionId, type: type, at: ledger.clock.now(), data: data)
        do {
            try await ledger.commit(SessionChange(sessionId: id, events: [event]))
        } catch StoreError.sessionNotFound {
            return
        } catch {
            logger.error(
                "recording a callback event failed",
                metadata: [
                    "sessionId": "\(id)", "executionId": "\(delivery.executionId)", "error": "\(String(reflecting: error))",
                ])
        }
    }
}
