// kapsule-qt-client: Kapsule's D-Bus API through proxies generated from the original daemon's
// XML, as libkapsule-qt and Konsole use it. On the system bus ($DBUS_SYSTEM_BUS_ADDRESS).
//
//   list                     one line per container: name|status|image|created|mode
//   info NAME                the same line for one container
//   prepare NAME [CMD...]    "ok" and the command to run, one word per line; or "failed: WHY"
//   create NAME IMAGE | start NAME | stop NAME | delete NAME
//                            runs the operation to its end: "completed", or "failed: WHY"
//
// A D-Bus error (a refused call, a reply whose signature is not the declared one) is printed as
// "error: NAME: MESSAGE" on stderr, with exit status 2; a failed operation or PrepareEnter exits 1.

#include "kapsulemanagerinterface.h"
#include "kapsuleoperationinterface.h"
#include "types.h"

#include <QCoreApplication>
#include <QDBusConnection>
#include <QEventLoop>
#include <QTextStream>

#include <cstdio>

namespace {

QTextStream out(stdout);
QTextStream err(stderr);

int dbusError(const QDBusError &error)
{
    err << "error: " << error.name() << ": " << error.message() << Qt::endl;
    return 2;
}

void printContainer(const Kapsule::Container &c)
{
    out << c.name << '|' << c.status << '|' << c.image << '|' << c.created << '|' << c.mode << Qt::endl;
}

// Waits for the operation at `path` to end. The Completed signal is connected before Status is
// read, so an operation that ends in between is seen either way.
int follow(const QDBusObjectPath &path)
{
    OrgKdeKapsuleOperationInterface operation(QStringLiteral("org.kde.kapsule"), path.path(),
                                              QDBusConnection::systemBus());
    QEventLoop loop;
    bool success = false;
    QString message;
    bool done = false;
    QObject::connect(&operation, &OrgKdeKapsuleOperationInterface::Completed,
                     [&](bool ok, const QString &text) {
                         success = ok;
                         message = text;
                         done = true;
                         loop.quit();
                     });
    const QString status = operation.status();
    if (operation.lastError().isValid())
        return dbusError(operation.lastError());
    if (status != QLatin1String("running")) {
        success = status == QLatin1String("completed");
        message = operation.errorMessage();
        done = true;
    }
    if (!done)
        loop.exec();
    if (success) {
        out << "completed" << Qt::endl;
        return 0;
    }
    out << "failed: " << message << Qt::endl;
    return 1;
}

int run(const QStringList &args)
{
    OrgKdeKapsuleManagerInterface manager(QStringLiteral("org.kde.kapsule"), QStringLiteral("/org/kde/kapsule"),
                                          QDBusConnection::systemBus());
    const QString command = args.value(0);
    const QString name = args.value(1);

    if (command == QLatin1String("list") && args.size() == 1) {
        auto reply = manager.ListContainers();
        reply.waitForFinished();
        if (reply.isError())
            return dbusError(reply.error());
        for (const auto &c : reply.value())
            printContainer(c);
        return 0;
    }
    if (command == QLatin1String("info") && args.size() == 2) {
        auto reply = manager.GetContainerInfo(name);
        reply.waitForFinished();
        if (reply.isError())
            return dbusError(reply.error());
        printContainer(reply.value());
        return 0;
    }
    if (command == QLatin1String("prepare") && args.size() >= 2) {
        auto reply = manager.PrepareEnter(name, args.mid(2), QString());
        reply.waitForFinished();
        if (reply.isError())
            return dbusError(reply.error());
        const Kapsule::EnterResult result = reply.value();
        if (!result.success) {
            out << "failed: " << result.message << Qt::endl;
            return 1;
        }
        out << "ok" << Qt::endl;
        for (const auto &word : result.command)
            out << word << Qt::endl;
        return 0;
    }
    QDBusPendingReply<QDBusObjectPath> started;
    if (command == QLatin1String("create") && args.size() == 3)
        started = manager.CreateContainer(name, args.at(2), QVariantMap());
    else if (command == QLatin1String("start") && args.size() == 2)
        started = manager.StartContainer(name);
    else if (command == QLatin1String("stop") && args.size() == 2)
        started = manager.StopContainer(name, false);
    else if (command == QLatin1String("delete") && args.size() == 2)
        started = manager.DeleteContainer(name, false);
    else {
        err << "usage: kapsule-qt-client list | info NAME | prepare NAME [CMD...] | "
               "create NAME IMAGE | start NAME | stop NAME | delete NAME"
            << Qt::endl;
        return 64;
    }
    started.waitForFinished();
    if (started.isError())
        return dbusError(started.error());
    return follow(started.value());
}

} // namespace

int main(int argc, char **argv)
{
    QCoreApplication app(argc, argv);
    Kapsule::registerTypes();
    if (!QDBusConnection::systemBus().isConnected())
        return dbusError(QDBusConnection::systemBus().lastError());
    return run(app.arguments().mid(1));
}
