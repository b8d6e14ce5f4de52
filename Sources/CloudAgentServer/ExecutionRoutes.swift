import CloudAgentCore
import CloudAgentEngine
import Foundation
import Hummingbird
import Logging

/// `/v1/sessions/{id}/initiate|messages|interrupt|executions|events`.
struct ExecutionRoutes {
    let service: SessionService

    func register(on group: RouterGroup<AppRequestContext>) {
        group.post("sessions/:sessionId/initiate", use: initiate)
        group.post("sessions/:sessionId/messages", use: message)
        group.post("sessions/:sessionId/interrupt", use: interrupt)
        group.get("sessions/:sessionId/executions", use: list)
        group.get("sessions/:sessionId/executions/:executionId", use: show)
        group.delete("sessions/:sessionId/executions/:executionId", use: cancel)
        group.get("sessions/:sessionId/events", use: events)
        group.get("sessions/:sessionId/input-requests", use: inputRequests)
        group.post("sessions/:sessionId/input-requests/:requestId", use: answerInput)
    }

    @Sendable func inputRequests(_ request: Request, context: AppRequestContext) async throws -> Response {
        let listed = try await service.inputRequests(of: try SessionRoutes.sessionID(context), owner: try context.requireOwner())
        let deadlines = service.inputDeadlines(of: listed.requests, in: listed.session)
        return JSONResponse.make(["requests": .array(zip(listed.requests, deadlines).map { $0.json(deadline: $1) })])
    }

    @Sendable func answerInput(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let id = try SessionRoutes.sessionID(context)
        _ = try await service.session(id, owner: owner)
        let requestId = context.parameters.get("requestId") ?? ""
        guard InputRequest.isRequestId(requestId) else { throw APIError.notFound("input request \(requestId)") }
        let answer: InputAnswer
        do { answer = try SessionService.parseInputAnswer(try await JSONResponse.body(of: request)) } catch let error as ValidationError {
            throw APIError.from(error)
        }
        let resolved = try await service.answerInput(id, owner: owner, requestId: requestId, answer: answer)
        return JSONResponse.make(resolved.json(deadline: nil))
    }

    /// 202: started, or queued with its place in the queue (1 = next).
    func accepted(_ id: SessionID, _ accepted: SessionService.Accepted) -> Response {
        let execution = accepted.execution
        var body: [String: JSONValue] = [
            "sessionId": .string(id.rawValue), "executionId": .string(execution.id.rawValue),
            "status": execution.status == .queued ? "queued" : "started",
            "streamUrl": .string("/v1/sessions/\(id.rawValue)/stream?executionId=\(execution.id.rawValue)"),
        ]
        if let position = accepted.position { body["position"] = .number(Double(position)) }
        return JSONResponse.make(.object(body), status: .accepted)
    }

    @Sendable func initiate(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try SessionRoutes.sessionID(context)
        return accepted(id, try await service.acceptExecution(id, owner: try context.requireOwner(), message: nil))
    }

    @Sendable func message(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let id = try SessionRoutes.sessionID(context)
        _ = try await service.session(id, owner: owner)
        let input: SessionService.MessageInput
        do { input = try SessionService.MessageInput.parse(try await JSONResponse.body(of: request)) } catch let error as ValidationError {
            throw APIError.from(error)
        }
        return accepted(id, try await service.acceptExecution(id, owner: owner, message: input))
    }

    @Sendable func interrupt(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try SessionRoutes.sessionID(context)
        guard let executionId = try await service.interrupt(id, owner: try context.requireOwner()) else {
            return JSONResponse.make(["interrupted": false])
        }
        return JSONResponse.make(["interrupted": true, "executionId": .string(executionId.rawValue)])
    }

    /// `?status=a,b` keeps the executions in those states (`queued`: the queue, in its order).
    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let id = try SessionRoutes.sessionID(context)
        var statuses: Set<ExecutionStatus>?
        if let text = request.uri.queryParameters["status"] {
            let names = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let parsed = names.compactMap(ExecutionStatus.init(rawValue:))
            guard !names.isEmpty, parsed.count == names.count else {
                throw APIError.invalid(field: "status", "must be a comma-separated list of \(ExecutionStatus.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            statuses = Set(parsed)
        }
        let session = try await service.session(id, owner: owner)
        var executions = try await service.executions(of: id, owner: owner)
        if let statuses { executions.removeAll { !statuses.contains($0.status) } }
        return JSONResponse.make(["executions": .array(executions.map { Views.execution($0, session: session) })])
    }

    /// Cancels a queued execution: 204; one that is not queued (any more) is 409 `INVALID_STATE`.
    @Sendable func cancel(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try SessionRoutes.sessionID(context)
        guard let raw = context.parameters.get("executionId"), let executionId = ExecutionID(rawValue: raw) else {
            throw APIError.notFound("execution \(context.parameters.get("executionId") ?? "")")
        }
        try await service.cancelQueued(executionId, of: id, owner: try context.requireOwner())
        return Response(status: .noContent)
    }

    @Sendable func show(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try SessionRoutes.sessionID(context)
        guard let raw = context.parameters.get("executionId"), let executionId = ExecutionID(rawValue: raw) else {
            throw APIError.notFound("execution \(context.parameters.get("executionId") ?? "")")
        }
        let owner = try context.requireOwner()
        let execution = try await service.execution(executionId, of: id, owner: owner)
        return JSONResponse.make(Views.execution(execution, session: try await service.session(id, owner: owner)))
    }

    @Sendable func events(_ request: Request, context: AppRequestContext) async throws -> Response {
        let id = try SessionRoutes.sessionID(context)
        let query = try Self.eventQuery(request.uri.queryParameters, defaultLimit: 100)
        let events = try await service.events(of: id, owner: try context.requireOwner(), query: query)
        return JSONResponse.make(["events": .array(events.map(\.json)), "nextFromId": .number(Double(events.last?.id ?? query.afterId))])
    }

    /// `fromId`, `limit`, `executionId`, `types` of the events and stream routes.
    static func eventQuery(_ parameters: Parameters, defaultLimit: Int) throws -> EventQuery {
        var query = EventQuery(limit: defaultLimit)
        if let text = parameters["fromId"] {
            guard let value = Int64(String(text)), value >= 0 else { throw APIError.invalid(field: "fromId", "must be a whole number ≥ 0") }
            query.afterId = value
        }
        if let text = parameters["limit"] {
            guard let value = Int(String(text)), (1...1000).contains(value) else {
                throw APIError.invalid(field: "limit", "must be a whole number from 1 to 1000")
            }
            query.limit = value
        }
        if let text = parameters["executionId"] {
            guard let value = ExecutionID(rawValue: String(text)) else { throw APIError.invalid(field: "executionId", "is not an execution id") }
            query.executionId = value
        }
        if let text = parameters["types"] {
            let types = Set(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
            guard !types.isEmpty, types.count <= 50, types.allSatisfy({ $0.count <= 64 }) else {
                throw APIError.invalid(field: "types", "must be a comma-separated list of event types")
            }
            query.types = types
        }
        return query
    }
}
