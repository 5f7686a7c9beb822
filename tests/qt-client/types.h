// The structs the original interface's Qt annotations name, marshalled as D-Bus structs: QtDBus
// derives each reply's expected signature from these, (sssss) and (bsas), and refuses any other.
#pragma once

#include <QDBusArgument>
#include <QList>
#include <QMetaType>
#include <QString>
#include <QStringList>

namespace Kapsule {

// One container: (name, status, image, created, mode).
struct Container {
    QString name;
    QString status;
    QString image;
    QString created;
    QString mode;
};

// PrepareEnter's reply: (success, message, command).
struct EnterResult {
    bool success = false;
    QString message;
    QStringList command;
};

QDBusArgument &operator<<(QDBusArgument &argument, const Container &container);
const QDBusArgument &operator>>(const QDBusArgument &argument, Container &container);
QDBusArgument &operator<<(QDBusArgument &argument, const EnterResult &result);
const QDBusArgument &operator>>(const QDBusArgument &argument, EnterResult &result);

// Registers the types with QtDBus; call once before the first call.
void registerTypes();

} // namespace Kapsule

Q_DECLARE_METATYPE(Kapsule::Container)
Q_DECLARE_METATYPE(Kapsule::EnterResult)
