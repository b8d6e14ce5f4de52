import CloudAgentProtocol
import HTTPTypes
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import WSClient

/// The runtime's WebSocket to the control plane, kept open for as long as the runtime lives.
/// The control plane may be several nodes (`ControlEndpoints`): each attempt goes to the current
/// endpoint, and after a failed connect, a close or an error the next attempt goes to the next
/// one — at once, unless every endpoint failed in a row, when it waits with capped exponential
/// backoff and jitter. Each connection says hello, waits for the welcome (which may name the
/// nodes anew), then carries the runtime's frames out and the control plane's frames in. A failed
/// upgrade whose route answers 401, 403 or 404 (`UpgradeStatusProbe`) is a refusal, not an
/// outage: the nodes share one database, so one node's refusal is the cluster's; the runtime is
/// told to stop, and this service waits for the end.
public struct ControlConnection: Service, CustomStringConvertible {
    let runtime: AgentRuntime
    let secret: RuntimeSecret
    let logger: Logger
    var backoff: ReconnectBackoff
    /// Shared by the reconnect loop and the connections' readers (a welcome may name the nodes).
    private let endpoints: SharedEndpoints

    public init(runtime: AgentRuntime, secret: RuntimeSecret, logger: Logger, backoff: ReconnectBackoff = ReconnectBackoff()) {
        self.runtime = runtime
        self.secret = secret
        self.logger = logger
        self.backoff = backoff
        endpoints = SharedEndpoints(ControlEndpoints(runtime.configuration.controlURLs))
    }

    /// A connection whose hello gets no welcome within this is dropped and made again.
    static let welcomeTimeout = Duration.seconds(15)

    struct NoWelcome: Error, CustomStringConvertible {
        var description: String { "no welcome within \(ControlConnection.welcomeTimeout)" }
    }

    /// A connection attempt whose TCP connect and WebSocket upgrade have not succeeded within
    /// this is abandoned and made again: an upgrade the other side never answers (a control
    /// plane killed mid-accept, say) must not stall reconnecting past the stale threshold.
    static let upgradeTimeout = Duration.milliseconds(2500)

    struct NoUpgrade: Error, CustomStringConvertible {
        var description: String { "the WebSocket upgrade was not answered within \(ControlConnection.upgradeTimeout)" }
    }

    /// ServiceLifecycle logs its services: this must not show the secret.
    public var description: String { "ControlConnection(\(runtime.configuration.controlURLs.joined(separator: ", ")))" }

    /// Returns on graceful shutdown (the open connection is closed normally) or cancellation.
    public func run() async {
        guard let refusal = await reconnect() else { return }
        await runtime.refused(status: refusal.status)
        // The runtime stops; its end shuts the service group down, and with it this service.
        try? await gracefulShutdown()
    }

    /// Connects, and connects again, until graceful shutdown or cancellation (nil) or a refusal.
    private func reconnect() async -> ControlPlaneRefusal? {
        var backoff = self.backoff
        let configuration = runtime.configuration
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            let endpoint = endpoints.update { $0.current }
            let welcomesBefore = await runtime.welcomeCount
            let started = ContinuousClock.now
            logger.debug("connecting to the control plane", metadata: ["endpoint": .string(endpoint)])
            do {
                try await Self.bounded(by: Self.upgradeTimeout) { [runtime, secret, logger] upgraded in
                    do {
                        try await WebSocketClient.connect(
                            url: endpoint,
                            configuration: Self.clientConfiguration(sessionId: configuration.sessionId, secret: secret),
                            logger: logger
                        ) { inbound, outbound, _ in
                            // An attempt given up on meanwhile must not take the link from a newer one.
                            guard upgraded() else { return }
                            try await self.connected(runtime: runtime, inbound: inbound, outbound: outbound)
                        }
                    } catch let error as WebSocketClientError where error == .webSocketUpgradeFailed {
                        // Any answer but 101: ask the route why (within this attempt's bound).
                        let status = try await UpgradeStatusProbe.status(
                            url: endpoint, headers: Self.authenticationHeaders(sessionId: configuration.sessionId, secret: secret), logger: logger
                        )
                        if let status, ControlPlaneRefusal.statuses.contains(status) { throw ControlPlaneRefusal(status: status) }
                        throw UpgradeDeclined(status: status)
                    }
                }
                logger.info("the control plane closed the connection", metadata: ["endpoint": .string(endpoint)])
            } catch let refusal as ControlPlaneRefusal {
                logger.warning("refusal from the control plane", metadata: ["endpoint": .string(endpoint), "status": "\(refusal.status)"])
                return refusal
            } catch {
                logger.warning("connection to the control plane failed", metadata: ["endpoint": .string(endpoint), "error": "\(error)"])
            }
            let welcomed = await runtime.welcomeCount != welcomesBefore
            if welcomed { backoff.reset() }
            let lasted = ContinuousClock.now - started
            let (wait, next) = endpoints.update { endpoints in (endpoints.attemptEnded(welcomed: welcomed, lasted: lasted), endpoints.current) }
            guard wait else {
                logger.debug("reconnecting at once to the next endpoint", metadata: ["endpoint": .string(next)])
                continue
            }
            let delay = backoff.nextDelay()
            logger.info("reconnecting", metadata: ["delay": "\(delay)", "endpoint": .string(next)])
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
        }
        return nil
    }

    /// A welcome or a `nodes` frame named the control plane's live nodes: later attempts go
    /// round them (the valid ones), until the next list.
    private func adopt(_ named: [String]) {
        let invalid = named.filter { !ControlEndpoints.isValid($0) }
        if !invalid.isEmpty {
            logger.warning("the control plane names endpoints that are not ws:// or wss:// URLs: ignored", metadata: ["invalid": "\(invalid)"])
        }
        guard let urls = endpoints.update({ $0.replace(with: named) ? $0.urls : nil }) else { return }
        logger.info("the control plane named its nodes", metadata: ["endpoints": "\(urls)"])
    }

    /// One upgraded connection: its link to the runtime, for as long as it lasts.
    private func connected(runtime: AgentRuntime, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async throws {
        let link = await runtime.openLink()
        do {
            try await exchange(on: link, inbound: inbound, outbound: outbound)
        } catch {
            await runtime.closeLink(link.id)
            throw error
        }
        await runtime.closeLink(link.id)
    }

    /// Runs `attempt` (a connection: TCP, upgrade, then its whole life), but gives up with
    /// `NoUpgrade` when it has not called `upgraded` within `limit`; `upgraded` answers false
    /// when the attempt was already given up (it must then close at once). A connect stuck in the
    /// upgrade may not react to cancellation, so the attempt runs in a task of its own that is
    /// cancelled and left behind rather than awaited; cancelling the caller cancels it too.
    static func bounded(
        by limit: Duration, _ attempt: @escaping @Sendable (_ upgraded: @escaping @Sendable () -> Bool) async throws -> Void
    ) async throws {
        let state = AttemptState()
        @Sendable func finish(_ result: Result<Void, any Error>) { state.finish(result) }
        let task = Task {
            do {
                try await attempt { state.markUpgraded() }
                finish(.success(()))
            } catch {
                finish(.failure(error))
            }
        }
        let watchdog = Task {
            try await Task.sleep(for: limit)
            if !state.upgraded {
                task.cancel()
                finish(.failure(NoUpgrade()))
            }
        }
        defer { watchdog.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                state.wait(continuation)
            }
        } onCancel: {
            task.cancel()
            watchdog.cancel()
        }
    }

    /// Frames of up to 1 MiB accepted, no compression; a 1 s close handshake at most.
    static func clientConfiguration(sessionId: String, secret: RuntimeSecret) -> WebSocketClientConfiguration {
        var headers = HTTPFields()
        for (name, value) in authenticationHeaders(sessionId: sessionId, secret: secret) {
            if let name = HTTPField.Name(name) { headers[name] = value }
        }
        return WebSocketClientConfiguration(
            maxFrameSize: RuntimeProtocol.maxFrameBytes,
            additionalHeaders: headers,
            closeTimeout: .seconds(1)
        )
    }

    /// The upgrade request's headers that say which session this is and prove it is its runtime.
    static func authenticationHeaders(sessionId: String, secret: RuntimeSecret) -> [(String, String)] {
        [(RuntimeProtocol.sessionHeader, sessionId), (RuntimeProtocol.secretHeader, secret.value)]
    }

    /// The largest WebSocket frame the runtime sends: a longer message goes out in fragments of
    /// this size, the default limit of WebSocket servers (16 KiB), so that a control plane need
    /// not raise its frame limit (only its message limit, `RuntimeProtocol.maxFrameBytes`).
    static let fragmentBytes = 1 << 14

    private static func write(_ text: String, to outbound: WebSocketOutboundWriter) async throws {
        guard text.utf8.count > fragmentBytes else {
            try await outbound.write(.text(text))
            return
        }
        var buffer = ByteBuffer(string: text)
        try await outbound.withTextMessageWriter { writer in
            while let fragment = buffer.readSlice(length: min(fragmentBytes, buffer.readableBytes)), fragment.readableBytes > 0 {
                try await writer(fragment)
            }
        }
    }

    /// Writes the link's frames (hello first), reads the control plane's, and heartbeats once
    /// welcomed; returns when the control plane closes, throws when either direction fails.
    private func exchange(
        on link: AgentRuntime.Link,
        inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for await frame in link.frames {
                    try await Self.write(frame, to: outbound)
                }
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: RuntimeProtocol.maxFrameBytes) {
                    guard case .text(let text) = message else {
                        logger.warning("binary frame from the control plane: ignored")
                        continue
                    }
                    switch Result(catching: { () throws(ProtocolError) in try ProtocolCoding.decodeControlMessage(text) }) {
                    case .success(let control):
                        switch control {
                        case .welcome(_, _, _, _, let named?), .nodes(let named): adopt(named)
                        default: break
                        }
                        await runtime.receive(control, on: link.id)
                    case .failure(let error) where error.unknownType != nil:
                        // A newer control plane's frame: harmless, ignored.
                        logger.info("frame of an unknown type from the control plane: ignored", metadata: ["type": "\(error.unknownType ?? "")"])
                    case .failure(let error):
                        logger.warning("unreadable frame from the control plane: ignored", metadata: ["error": "\(error)"])
                    }
                }
            }
            group.addTask {
                let welcomeDeadline = ContinuousClock.now + Self.welcomeTimeout
                while true {
                    let interval = await runtime.heartbeatInterval(on: link.id)
                    if interval == nil, ContinuousClock.now >= welcomeDeadline { throw NoWelcome() }
                    try await Task.sleep(for: interval ?? .milliseconds(20))
                    if interval != nil { await runtime.sendHeartbeat(on: link.id) }
                }
            }
            // The first to finish (the reader at a close, or any failure) ends the connection.
            _ = try await group.next()
            group.cancelAll()
        }
    }
}

/// The runtime's own secret, which authenticates its connection. Shown as `<redacted>` in any
/// description, so that no log line can carry it.
public struct RuntimeSecret: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    let value: String

    public init(_ value: String) { self.value = value }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: [:]) }
}

/// The endpoints behind a lock: the reconnect loop and the connections' readers share them.
private final class SharedEndpoints: Sendable {
    private let state: Mutex<ControlEndpoints>

    init(_ endpoints: ControlEndpoints) { state = Mutex(endpoints) }

    func update<T: Sendable>(_ body: (inout ControlEndpoints) -> T) -> T {
        state.withLock { body(&$0) }
    }
}

/// One bounded connection attempt: whether it upgraded, and its result, delivered once.
private final class AttemptState: Sendable {
    private struct State {
        var upgraded = false
        var continuation: CheckedContinuation<Void, any Error>?
        var result: Result<Void, any Error>?
    }

    private let state = Mutex(State())

    var upgraded: Bool { state.withLock { $0.upgraded } }

    /// The connection upgraded; false when the attempt was already given up.
    func markUpgraded() -> Bool {
        state.withLock { state in
            guard state.result == nil else { return false }
            state.upgraded = true
            return true
        }
    }

    /// The first result wins; it resumes the waiter, now or when it comes.
    func finish(_ result: Result<Void, any Error>) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            guard state.result == nil else { return nil }
            state.result = result
            defer { state.continuation = nil }
            return state.continuation
        }
        continuation?.resume(with: result)
    }

    func wait(_ continuation: CheckedContinuation<Void, any Error>) {
        let finished = state.withLock { state -> Result<Void, any Error>? in
            if state.result == nil { state.continuation = continuation }
            return state.result
        }
        if let finished { continuation.resume(with: finished) }
    }
}
