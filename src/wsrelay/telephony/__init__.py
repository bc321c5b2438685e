"""Telephony providers' media streams: their first messages (sans-I/O), Twilio's signatures, and
the hold that reads them."""
