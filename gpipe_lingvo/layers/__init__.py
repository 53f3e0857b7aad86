"""Layers of gpipe_lingvo; each module holds one family."""
from gpipe_lingvo.layers.activation import Activation
from gpipe_lingvo.layers.conv import Conv2D
from gpipe_lingvo.layers.conv import DepthwiseConv2D
from gpipe_lingvo.layers.dense import FullyConnected
from gpipe_lingvo.layers.dropout import Dropout
from gpipe_lingvo.layers.flatten import Flatten
from gpipe_lingvo.layers.loss import SoftmaxCrossEntropy
from gpipe_lingvo.layers.normalization import BatchNorm
from gpipe_lingvo.layers.pooling import GlobalPool
from gpipe_lingvo.layers.pooling import Pool2D
from gpipe_lingvo.layers.sequential import Sequential
