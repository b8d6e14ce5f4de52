import CloudAgentCore
import CloudAgentEngine
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOWebSocket

/// `WS /v1/sessions/{id}/stream?fromId=&executionId=&types=`: replays the events with ids above
/// `fromId`, then follows live, one JSON event per text frame, in id order, with no duplicate at
/// the seam. Auth by bearer header or `?ticket=`. A subscriber that falls behind its bounded
/// buffer is closed with code 4001 and a reason naming the `fromId` to resume from; subscribers
/// of a deleted session are closed with 4004.
struct StreamEndpoint {
    static let slowConsumerCode = 4001
    static let sessionDeletedCode = 4004

    let service: SessionService
    let authority: TokenAuthority
    let tickets: StreamTickets
    let bufferSize: Int

    func register(on router: Router<AppRequestContext>) {
        router.ws("v1/sessions/:sessionId/stream") { request, context in
            _ = try await authorize(request, context: context)
            // A plain GET (no WebSocket handshake) would otherwise be answered 200 with nothing.
            guard request.headers[.secWebSocketKey] != nil else {
                throw APIError(.badRequest, code: "INVALID_REQUEST", "this route is a WebSocket: send Connection: Upgrade, Upgrade: websocket")
            }
            return .upgrade([:])
        } onUpgrade: { inbound, outbound, context in
            guard let (session, query) = try? await authorize(context.request, context: context.requestContext) else { return }
            try await stream(session: session, query: query, inbound: inbound, outbound: outbound, logger: context.logger)
        }
        router.group("v1").add(middleware: BearerAuthentication(authority: authority))
            .post("sessions/:sessionId/stream-ticket") { _, context in
                let owner = try context.requireOwner()
                let id = try SessionRoutes.sessionID(context)
                _ = try await service.session(id, owner: owner)
                let issued = tickets.issue(owner: owner, session: id, now: Date())
                return JSONResponse.make(["ticket": .string(issued.ticket), "expiresAt": JSONValue(issued.expiresAt)])
            }
    }

    /// The session and the query of a stream request: 401 without a valid token or ticket,
    /// 404 for a session that is not the caller's, 400 for a bad query.
    func authorize(_ request: Request, context: AppRequestContext) async throws -> (SessionID, EventQuery) {
        let id = try SessionRoutes.sessionID(context)
        let parameters = request.uri.queryParameters
        var owner: Owner?
        if let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") {
            owner = try await authority.owner(for: String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces))
        } else if let ticket = parameters["ticket"] {
            owner = tickets.verify(String(ticket), session: id, now: Date())
        }
        guard let owner else { throw APIError.unauthorized }
        _ = try await service.session(id, owner: owner)
        return (id, try ExecutionRoutes.eventQuery(parameters, defaultLimit: 500))
    }

    func stream(session: SessionID, query: EventQuery, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, logger: Logger) async throws {
        // Subscribe before replaying, so nothing committed in between is missed; the seam
        // drops live events the replay already sent.
        let subscription = service.hub.subscribe(session, bufferSize: bufferSize)
        defer { subscription.continuation.finish() }
        func matches(_ event: Event) -> Bool {
            (query.executionId == nil || event.executionId == query.executionId) && (query.types?.contains(event.type) ?? true)
        }
        func send(_ text: String) async throws {
            try await outbound.write(.text(text))
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // Reading the client's frames answers its pings and notices its close.
            group.addTask {
                for try await _ in inbound.messages(maxSize: 64 * 1024) {}
            }
            group.addTask {
                var lastId = query.afterId
                while true {
                    let page = try await service.store.events(
                        of: session, EventQuery(afterId: lastId, limit: 500, executionId: query.executionId, types: query.types))
                    for event in page { try await send(JSONText.encode(event.json)) }
                    lastId = page.last?.id ?? lastId
                    if page.count < 500 { break }
                }
                for await live in subscription.events where live.event.id > lastId {
                    // Commits of one session publish in the order they finish, not always in id
                    // order: an event past a gap has the gap read from the store first (every
                    // event is committed before it is published), so none is skipped or repeated.
                    if live.event.id > lastId + 1 {
                        let gap = try await service.store.events(
                            of: session,
                            EventQuery(
                                afterId: lastId, limit: Int(min(live.event.id - lastId - 1, 10_000)), executionId: query.executionId, types: query.types
                            ))
                        for event in gap where event.id < live.event.id { try await send(JSONText.encode(event.json)) }
                    }
                    lastId = live.event.id
                    if matches(live.event) { try await send(live.text) }
                }
                // Cancelled because the reader ended (the client closed, or sent a message over
                // the limit): the WebSocket handler closes with the right code. Closing here
                // would fail half-way and leave the connection without a close frame until the
                // close timeout.
                if Task.isCancelled { return }
                if subscription.didOverflow {
                    logger.info("stream subscriber too slow; closed", metadata: ["sessionId": "\(session)", "fromId": "\(lastId)"])
                    try await outbound.close(.init(codeNumber: Self.slowConsumerCode), reason: "slow consumer: resume with fromId=\(lastId)")
                } else {
                    try await outbound.close(.init(codeNumber: Self.sessionDeletedCode), reason: "session deleted")
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }
}
